"""benchmarks/recipe_search.py: every model gets the same grid, the choice is the lowest validation loss, and a
second run reads the finished trials back instead of training them again."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def _search(fashion_small, tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "recipe_search.py"),
        "--models", "mae_tiny,ginr_tiny",
        "--steps", "3",
        "--lrs", "1e-4,3e-3",
        "--warmups", "0,0.9",
        "--data-root", str(fashion_small),
        "--work", str(tmp_path / "work"),
        "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp_path / "out" / "results.json").read_text())


def test_equal_grid_choice_on_validation_and_resume(fashion_small, tmp_path):
    res = _search(fashion_small, tmp_path)
    trials = res["trials"]
    for model in ("mae_tiny", "ginr_tiny"):
        mine = [t for t in trials if t["model"] == model]
        assert sorted((t["lr"], t["warmup"]) for t in mine) == [(1e-4, 0.0), (1e-4, 0.9), (3e-3, 0.0), (3e-3, 0.9)]
        assert len({t["val_loss"] for t in mine}) == 4  # every trial trained with its own recipe
        assert res["chosen"][model]["val_loss"] == min(t["val_loss"] for t in mine)
        assert all(t["steps"] == 3 for t in mine)
    ckpt = tmp_path / "work" / "mae_tiny" / "lr0.0001-warmup0" / "checkpoint.safetensors"
    before = ckpt.stat().st_mtime_ns
    again = _search(fashion_small, tmp_path)
    assert ckpt.stat().st_mtime_ns == before and again["chosen"] == res["chosen"]
    assert "chosen" in (tmp_path / "out" / "results.md").read_text()
