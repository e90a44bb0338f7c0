import json
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from cli.bench.config import load_preset, preset_names
from cli.bench.run import STAGES, validate
from cli.bench.stages import selected
from cli.main import main
from minr.errors import MinrError
from tests.conftest import ROOT


def test_presets_validate_and_overrides_apply():
    assert set(preset_names()) >= {"quick", "cpu-full", "paper"}
    for name in ("quick", "cpu-full"):
        cfg = load_preset(name)
        assert (
            selected(cfg) == [s.name for s in STAGES]
            and cfg.pretrain.kept_steps()[0] == 0
            and cfg.pretrain.kept_steps()[-1] == cfg.pretrain.steps
        )
    full = load_preset("cpu-full")
    assert full.pretrain.steps == 843 and full.probe.max_images == 10000
    assert full.segment.frozen.max_steps == full.segment.full.max_steps == 600  # equal steps: the two are compared
    assert [e.name for e in full.pretrain.extra][:2] == ["ginr_tiny-digits", "mae_tiny-digits"]
    assert {e.set.get("model_args.modulated_layer") for e in full.pretrain.extra[2:]} == {1, 3, 4}
    assert load_preset("cpu-full", {"pretrain.extra": []}).pretrain.extra == ()  # --set replaces the extra runs
    one = load_preset("cpu-full", {"pretrain.extra": [{"name": "g-digits", "model": "ginr_tiny", "dataset": "digits"}]})
    assert [(e.name, e.dataset) for e in one.pretrain.extra] == [("g-digits", "digits")]
    with pytest.raises(MinrError, match="pretrain.extra must be a list"):
        load_preset("cpu-full", {"pretrain.extra": "none"})
    cfg = load_preset("quick", {"pretrain.steps": 10, "probe.seeds": 2}, models=("ginr_tiny",), stages=("pretrain",))
    assert (cfg.pretrain.steps, cfg.probe.seeds, cfg.models, cfg.stages) == (10, 2, ("ginr_tiny",), ("pretrain",))
    with pytest.raises(MinrError, match="needs --set pretrain.dataset"):
        validate(load_preset("paper"))
    paper = load_preset("paper", {f"{s}.dataset": "imagefolder:/x" for s in ("pretrain", "probe", "finetune")})
    assert paper.models == ("ginr_paper", "transinr_paper", "mae_base_paper")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--models", "ginr_tiny,vit"], "unknown model 'vit'"),
        (["--stages", "pretrain,train"], "unknown stage 'train'"),
        (["--set", "probe.sedes=2"], "unknown config key 'probe.sedes'"),
    ],
)
def test_bench_bad_input(args, message, tmp_path):
    r = CliRunner().invoke(main, ["bench", "--out", str(tmp_path / "b"), *args])
    assert r.exit_code == 2 and message in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "b").exists()  # nothing written


def tiny(root):
    """The quick preset shrunk to seconds per stage, on the small Fashion-MNIST subset."""
    sets = {
        "pretrain.data_root": root,
        "pretrain.steps": 4,
        "pretrain.batch_size": 32,
        "pretrain.curve": "[0, 1]",
        "reconstruct.datasets": "[fashion-mnist]",
        "reconstruct.mask_ratios": "[0.75]",
        "reconstruct.mask_kinds": "[random]",
        "reconstruct.max_images": 24,
        "probe.max_images": 150,
        "probe.curve_max_images": 100,
        "probe.epochs": 1,
        "probe.mask_ratios": "[0, 0.5]",
        "finetune.max_images": 150,
        "finetune.batch_size": 32,
        "segment.scenes_train": 16,
        "segment.scenes_val": 8,
        "segment.frozen.max_steps": 3,
        "segment.full.max_steps": 2,
        "segment.backbones": "[tokens, inr, pixels]",
        "segment.inr_fit_steps": 2,
    }
    return ["--models", "ginr_tiny,mae_tiny", "--quiet", *(a for k, v in sets.items() for a in ("--set", f"{k}={v}"))]


def _same(path, out):
    """results.json without what changes from run to run (timings, speeds, the code's sha, where it was written)."""
    return json.dumps(_strip(json.loads(path.read_text()))).replace(str(out), "OUT")


def _strip(x):
    if isinstance(x, dict):
        drop = (
            "seconds",
            "continued",
            "runtime_s",
            "images_per_s",
            "train_images_per_s",
            "extract_images_per_s",
            "cached",
            "peak_memory_mb",
            "images_seen_this_session",
            "train_seconds",
            "git_sha",
            "hardware",
            "stages",
            "pretrain img/s",
        )
        return {k: _strip(v) for k, v in x.items() if k not in drop}
    if isinstance(x, list):
        return [_strip(v) for v in x if not (isinstance(v, str) and v.startswith("Stages:"))]
    return x


class Sections(HTMLParser):
    def __init__(self):
        super().__init__()
        self.h2, self.tables, self.images, self._in = [], 0, [], False

    def handle_starttag(self, tag, attrs):
        self._in = tag == "h2"
        self.tables += tag == "table"
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._in:
            self.h2.append(data)
            self._in = False


@pytest.mark.slow
def test_bench_end_to_end_skips_reruns_and_resumes(tmp_path, fashion_small):
    out = tmp_path / "a"
    args = ["bench", "--preset", "quick", "--out", str(out), *tiny(str(fashion_small))]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert "stage 1/6 pretrain" in r.output and "stage 6/6 report" in r.output
    res = json.loads((out / "results.json").read_text())
    assert [h["model"] for h in res["headline"]] == ["ginr_tiny", "mae_tiny", "raw pixels (floor)"]
    assert res["verdict"] and res["checkpoints"]["ginr_tiny"] and res["hardware"]["cpu_count"]
    page = Sections()
    page.feed((out / "report.html").read_text())
    assert {"Headline", "Paired MINR - MAE", "Learning curves", "Transfer matrix"} <= set(page.h2)
    assert (
        page.tables >= 6 and len(page.images) >= 5 and all(s.startswith("data:image/png;base64,") for s in page.images)
    )
    curve = json.loads((out / "probe" / "curve" / "results.json").read_text())
    assert {(p["a"].split(":")[0], p["b"].split(":")[0]) for p in curve["paired"]} == {
        ("ginr_tiny@0", "mae_tiny@0"),
        ("ginr_tiny@4", "mae_tiny@4"),
    }  # the learning curve pairs MINR with MAE at the same step only
    md = (out / "report.md").read_text()
    assert "## Verdict (computed from the numbers above)" in md and "learning_curves.png" in md
    crossings = [v for v in res["verdict"] if v.startswith("Learning curve, ")]  # where each meets the pixel floor
    assert len(crossings) == 4 and all("the pixel floor (" in v for v in crossings), crossings
    sha = json.loads((out / "pretrain" / "stage.json").read_text())["git_sha"]  # the code each stage ran
    assert f"Code: {sha}. Machine: " in md, md.splitlines()[:8]
    assert "## Segmentation, frozen backbone: IoU per class" in md and "| pixels (floor) |" in md
    assert "segmentation frozen, against the pixel floor" in md and "segmentation full, inr[3]" in md
    # everything again: every stage is skipped and the results stay the same
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and again.output.count("skipped") == 6, again.output
    first = _same(out / "results.json", out)
    # another configuration is refused unless forced; then only the stages whose inputs changed run
    changed = [*args, "--set", "probe.seeds=2"]
    r = CliRunner().invoke(main, changed)
    assert r.exit_code == 2 and "another configuration" in r.output
    r = CliRunner().invoke(main, [*changed, "--force"])
    assert r.exit_code == 0, r.output
    skipped = [ln.split()[2].rstrip(":") for ln in r.output.splitlines() if "skipped" in ln]
    assert skipped == ["pretrain", "reconstruct", "finetune", "segment"]
    # a bench killed in the middle of a stage, run again, ends with the same results
    killed = tmp_path / "b"
    cmd = [
        sys.executable,
        "-m",
        "cli.main",
        "bench",
        "--preset",
        "quick",
        "--out",
        str(killed),
        *tiny(str(fashion_small)),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)  # the same threads as the run it is compared with
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (killed / "probe" / "stage-inputs.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "report.md").exists()
    r = CliRunner().invoke(main, ["bench", "--preset", "quick", "--out", str(killed), *tiny(str(fashion_small))])
    assert r.exit_code == 0, r.output
    assert "probe: " in r.output and "continuing" in r.output
    assert json.loads((killed / "results.json").read_text())["stages"]["probe"]["continued"] is True
    assert _same(killed / "results.json", killed) == first
