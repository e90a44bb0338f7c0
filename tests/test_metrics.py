import math

import numpy as np
import pytest
import torch

from minr.metrics import psnr_from_mse, psnr_protocols
from probes.stats import bootstrap_mean, compare, minr_vs_mae, wilcoxon_p


def _psnr(mse: float) -> float:
    return -10 * math.log10(mse)


def test_psnr_protocols_exact_on_a_hand_made_image():
    """2x2 image of zeros; the reconstruction is 0.1..0.4; the top-left and bottom-right pixels are masked."""
    target = torch.zeros(1, 1, 2, 2)
    recon = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]]]])
    mask = torch.tensor([[[[True, False], [False, True]]]])
    got = {k: v.item() for k, v in psnr_protocols(recon, target, mask).items()}
    assert got["full"] == pytest.approx(_psnr((0.01 + 0.04 + 0.09 + 0.16) / 4), rel=1e-6)
    assert got["pasted"] == pytest.approx(_psnr((0.01 + 0.16) / 4), rel=1e-6)  # visible pixels come from the input
    assert got["masked"] == pytest.approx(_psnr((0.01 + 0.16) / 2), rel=1e-6)  # only the two masked pixels


def test_psnr_protocols_channels_clamping_and_per_image():
    """The mask broadcasts over channels, the reconstruction is clamped to [0, 1], each image has its own PSNR."""
    target = torch.ones(2, 3, 2, 2)
    recon = torch.full((2, 3, 2, 2), 1.5)  # clamped to 1: no error at all
    recon[1, :, 0, 0] = 0.5  # image 1: error 0.25 on one pixel in all 3 channels
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[:, :, 0, :] = True  # the top row is masked
    got = psnr_protocols(recon, target, mask)
    assert got["full"][0].item() == pytest.approx(psnr_from_mse(torch.tensor(1e-10)).item())  # floor of the log
    assert got["full"][1].item() == pytest.approx(_psnr(0.25 * 3 / 12), rel=1e-6)
    assert got["pasted"][1].item() == pytest.approx(_psnr(0.25 * 3 / 12), rel=1e-6)
    assert got["masked"][1].item() == pytest.approx(_psnr(0.25 * 3 / 6), rel=1e-6)


def test_error_outside_the_mask_counts_only_in_full():
    target = torch.zeros(1, 1, 2, 2)
    recon = torch.tensor([[[[0.0, 0.5], [0.5, 0.0]]]])  # wrong only on the visible pixels
    mask = torch.tensor([[[[True, False], [False, True]]]])
    got = psnr_protocols(recon, target, mask)
    assert got["full"].item() == pytest.approx(_psnr(0.5 / 4), rel=1e-6)
    assert got["pasted"].item() == got["masked"].item() == pytest.approx(100.0)  # perfect where it is judged


def test_paired_statistics_for_continuous_values():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, 200)
    b = a - 0.5 + rng.normal(0, 0.1, 200)  # a is better by 0.5 on every item
    p = compare("a", a, "b", b, method="m", metric="psnr")
    assert p.test == "wilcoxon" and p.diff == pytest.approx(0.5, abs=0.05) and p.ci_low > 0.4 and p.p < 1e-10
    assert p.significant
    assert wilcoxon_p(a, a) == 1.0
    mean, lo, hi = bootstrap_mean(np.array([1.0, 2.0, 3.0, float("nan")]))
    assert mean == 2.0 and 1.0 <= lo <= mean <= hi <= 3.0
    rows = minr_vs_mae([("g", "minr", a), ("t", "minr", a), ("m", "mae", b)], method="m", metric="psnr")
    assert [(r.a, r.b) for r in rows] == [("g", "m"), ("t", "m")]
    steps = [("g@0", "minr", a), ("g@9", "minr", a), ("m@0", "mae", b), ("m@9", "mae", b)]
    rows = minr_vs_mae(steps, method="m", metric="psnr", groups=[0, 9, 0, 9])
    assert [(r.a, r.b) for r in rows] == [("g@0", "m@0"), ("g@9", "m@9")]  # only within a group
    with pytest.raises(ValueError, match="same items"):
        compare("a", a, "b", b[:10], method="m", metric="psnr")


NAMES = ["ginr_tiny-layer3/checkpoint-step000253", "transinr_tiny", "mae_tiny-digits"]
HEADERS = ["model", "full PSNR", "pasted PSNR", "masked PSNR", "linear acc", "k-NN acc", "fine-tune acc"]


def _printed(rows, *, width: int, terminal: bool) -> list[str]:
    import io

    from rich.console import Console

    from probes.tables import print_table

    console = Console(width=width, force_terminal=terminal, color_system=None, file=io.StringIO())
    print_table(HEADERS, rows, title="minr bench quick", console=console)
    return console.file.getvalue().splitlines()


@pytest.mark.parametrize("terminal", [False, True], ids=["piped", "terminal"])
@pytest.mark.parametrize("names", [NAMES, [n[:12] for n in NAMES]], ids=["long-names", "short-names"])
def test_tables_at_80_columns_never_split_a_name_or_number(terminal, names):
    """Piped: a Markdown table, one row per line. On an 80-column terminal: whole words in columns that fit, or one
    record at a time when the longest words cannot fit side by side; never `81.3` / `8` on two lines."""
    rows = [[n, "15.14", "16.18", "14.96", f"81.3{i}", "80.12", "85.00"] for i, n in enumerate(names)]
    lines = _printed(rows, width=80, terminal=terminal)
    text = "\n".join(lines)
    assert "…" not in text
    for row in rows:
        for cell in row:  # each value whole on one line, once per row it is in
            assert sum(cell in line for line in lines) == sum(r.count(cell) for r in rows), (cell, text)
    if terminal:
        assert max(len(line) for line in lines[1:]) <= 80  # the title may run on; the terminal wraps it
    else:
        assert lines[2].startswith("| model | full PSNR |") and len(lines) == 5 + len(rows) and not lines[-1]
