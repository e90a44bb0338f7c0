import json

import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from minr import masking
from minr.build import default_config
from minr.config import MaskConfig
from minr.models import create_model
from minr.train import pretrain
from tests.conftest import killed_after_first_checkpoint


def _masks(kind, n=4, ratio=0.75):
    return masking.make_masks(range(n), MaskConfig(kind=kind, ratio=ratio, patch=4), 28, seed=0, salt="t")


def test_dropping_masked_tokens_changes_nothing_when_nothing_is_masked():
    torch.manual_seed(0)
    exact = create_model("transinr_tiny").eval()
    fast = create_model("transinr_tiny", drop_masked_tokens=True).eval()
    fast.load_state_dict(exact.state_dict())
    x, none = torch.rand(3, 1, 28, 28), torch.zeros(3, 7, 7, dtype=torch.bool)
    with torch.no_grad():
        assert torch.equal(exact(x, none, 4).recon, fast(x, none, 4).recon)


def test_dropped_tokens_are_unseen_and_padding_is_exact():
    torch.manual_seed(0)
    model = create_model("ginr_tiny", drop_masked_tokens=True).eval()
    x = torch.rand(4, 1, 28, 28)
    mask = _masks("bernoulli")  # every image keeps a different number of tokens: padded, kept out of attention
    assert mask.flatten(1).sum(1).unique().numel() > 1
    with torch.no_grad():
        batched = model(x, mask, 4).recon
        alone = torch.cat([model(x[i : i + 1], mask[i : i + 1], 4).recon for i in range(4)])
        assert torch.allclose(batched, alone, atol=1e-5)
        # a masked cell's token is gone: changing its position embedding changes nothing
        masked_cell = int(mask[0].flatten().nonzero()[0])
        model.pos_embed[0, masked_cell] += torch.randn(128)  # (a constant shift would vanish in the LayerNorms)
        assert torch.allclose(model(x[:1], mask[:1], 4).recon, alone[:1], atol=1e-6)
        visible_cell = int((~mask[0]).flatten().nonzero()[0])
        model.pos_embed[0, visible_cell] += torch.randn(128)
        assert not torch.allclose(model(x[:1], mask[:1], 4).recon, alone[:1], atol=1e-3)
    tokens = model.encode(x, masking.to_pixels(_masks("random"), 4, 28))
    assert tokens.shape[1] == 49 - masking.num_masked(49, 0.75) + model.num_weight_tokens  # 12 visible + 64


@pytest.mark.slow
def test_fast_options_train_and_resume_exactly(fashion_small, tmp_path, monkeypatch):
    """Both fast options on (dropped tokens, a quarter of the pixels rendered, GINR's coordinate noise): a run
    killed after its first checkpoint and resumed ends where an uninterrupted run ends."""
    from minr.checkpoint import load_checkpoint, weights_sha256

    over = {
        "data.root": str(fashion_small),
        "train.batch_size": 32,
        "train.max_steps": 6,
        "train.ckpt_every": 3,
        "train.val_max_images": 32,
        "model_args.drop_masked_tokens": True,
        "train.render_fraction": 0.25,
        "train.coord_noise": "coordwise",
    }
    cfg = default_config("ginr_tiny", over)
    pretrain(cfg, tmp_path / "a", progress=False)
    with killed_after_first_checkpoint(monkeypatch):
        pretrain(cfg, tmp_path / "b", progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.safetensors").meta["step"] == 3
    pretrain(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.safetensors") for d in "ab")
    assert weights_sha256(a.model_state) == weights_sha256(b.model_state)


def test_speed_benchmark_quick_mode(tmp_path):
    r = CliRunner().invoke(main, ["bench-speed", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "speed.json").read_text())
    assert report["ceiling_gflops"] > 1 and report["train"][0]["model"] == "ginr_tiny"
    t = report["train"][0]
    assert t["gflop_per_image"] > 0.1 and 0 < t["ceiling_ratio"] < 2 and t["peak_mb"] > 100
    assert [r["scale"] for r in report["render"]] == [1, 2] and report["probes"]["knn_s"] > 0
    assert "of ceiling" in (tmp_path / "speed.md").read_text()


def test_gpu_check_runs_its_code_path_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --device cpu --quick: bf16 autocast against fp32 on the tiny presets."""
    from cli.bench.gpu_check import main as gpu_check

    report = gpu_check(["--device", "cpu", "--quick", "--out", str(tmp_path / "g.json")])
    assert set(report["models"]) == {"transinr_tiny", "ginr_tiny", "mae_tiny"}
    for entry in report["models"].values():
        assert entry["ok"] and entry["precision"]["grad_cosine"] > 0.99 and entry["speed"]["images_per_s"] > 0
    assert json.loads((tmp_path / "g.json").read_text())["bf16_matmul_gflops"] > 0
