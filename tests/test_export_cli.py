"""`minrctl export` as a user runs it: a fresh process, every model family, no module imported beforehand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, make_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ginr_tiny", "transinr_tiny", "mae_tiny"])
def test_export_to_mmseg_in_a_fresh_process(model, tmp_path):
    ckpt = make_checkpoint(model, tmp_path / model / "checkpoint.safetensors")
    out = tmp_path / "export"
    cmd = [sys.executable, "-m", "cli.main", "export", str(ckpt), "--to", "mmseg", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "backbone.pth").is_file() and len(list(out.glob(f"{model}_upernet_*.py"))) == 1
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_segmentation_prints_no_library_warnings(tmp_path, fashion_small):
    """mmcv's notice about its uncompiled ops, mmseg's build_loss and avg_non_ignore warnings and mmengine's metric
    prefix warning are answered where minr triggers them; a run in a fresh process shows none of them."""
    ckpts = [make_checkpoint(m, tmp_path / m / "checkpoint.safetensors") for m in ("ginr_tiny", "mae_tiny")]
    scenes = tmp_path / "scenes"
    py = [sys.executable, "-W", "default", "-m", "cli.main"]
    make = [*py, "data", "make-fashion-scenes", "--out", str(scenes), "--n-train", "8", "--n-val", "4"]
    subprocess.run([*make, "--data-root", str(fashion_small)], cwd=ROOT, check=True, capture_output=True)
    seg = [*py, "finetune", "--task", "segmentation", *(a for c in ckpts for a in ("--ckpt", str(c)))]
    seg += ["--dataset", f"fashion-scenes:{scenes}", "--regime", "frozen", "--max-steps", "2", "--batch-size", "2"]
    r = subprocess.run([*seg, "--out", str(tmp_path / "seg"), "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "warn" not in (r.stdout + r.stderr).lower(), r.stderr
