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
