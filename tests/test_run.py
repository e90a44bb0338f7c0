"""The run set-up every trainer shares (`minr.run`): what opening a run folder refuses, and what it leaves."""

from __future__ import annotations

import shutil

import pytest

from minr.errors import MinrError
from minr.io import LOCK_NAME
from minr.run import RunSpec, training_run
from tests.conftest import make_checkpoint


def test_a_run_resumes_only_a_checkpoint_of_its_own_kind_and_a_refusal_leaves_no_lock(tmp_path):
    """A pretraining checkpoint where a segmentation run keeps its own is refused by kind, for every trainer
    alike (they open their folders through one function); the refused folder keeps only what it held."""
    pre = make_checkpoint("ginr_tiny", tmp_path / "pre" / "checkpoint.safetensors")
    run_dir = tmp_path / "seg"
    run_dir.mkdir()
    shutil.copy(pre, run_dir / "segmentation.safetensors")
    spec = RunSpec(run_dir / "segmentation.safetensors", kind="segmentation", identity={})
    with (
        pytest.raises(MinrError, match="is a pretrain checkpoint, not a segmentation run's"),
        training_run(spec, resume=True),
    ):
        pass
    assert sorted(p.name for p in run_dir.iterdir()) == ["segmentation.safetensors"]
    assert not (run_dir / LOCK_NAME).exists()
    with pytest.raises(MinrError, match="already holds a run"), training_run(spec, resume=False):
        pass
