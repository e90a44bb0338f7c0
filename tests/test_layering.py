"""The layers: cli -> finetune -> probes -> minr. The core imports without cv2, mmcv or mmseg, and no package
imports one above it; each checked in a fresh interpreter so nothing imported by other tests hides a dependency."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module({pkg!r})
for m in pkgutil.walk_packages(pkg.__path__, {pkg!r} + "."):
    importlib.import_module(m.name)
print(json.dumps(sorted({{n.split(".")[0] for n in sys.modules}})))
"""

ABOVE = {
    "minr": {"probes", "finetune", "cli", "cv2", "mmcv", "mmseg", "mmengine"},
    "probes": {"finetune", "cli", "mmcv", "mmseg", "mmengine"},
    "finetune": {"cli"},
}


@pytest.mark.parametrize("pkg", sorted(ABOVE))
def test_package_imports_nothing_above_it(pkg):
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(pkg=pkg)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert not loaded & ABOVE[pkg], f"{pkg} imports {sorted(loaded & ABOVE[pkg])}"
