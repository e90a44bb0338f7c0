"""Make mmsegmentation importable with mmcv-lite (no compiled `mmcv._ext`).

A few mmseg modules import `mmcv.ops` unconditionally, and mmcv-lite's `mmcv.ops` needs the compiled extension.
When (and only when) `mmcv._ext` is absent, `install()` registers a small `mmcv.ops` in `sys.modules` before
any mmseg import: `point_sample` / `bilinear_grid_sample` from mmcv-lite's own pure-PyTorch file, a PyTorch
`sigmoid_focal_loss`, and `ModuleNotFoundError` for every other op, so mmseg's own fallbacks apply. With full
mmcv installed this module does nothing. Data-loader workers import it through `finetune.segmentation`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

SHIM_FLAG = "__minr_shim__"


def has_compiled_ops() -> bool:
    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        return False
    return True


def sigmoid_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """mmcv's op in PyTorch: logits (N, C), target (N,) class indices (C = background). Same signature."""
    one_hot = F.one_hot(target.long(), input.shape[1] + 1)[:, : input.shape[1]].type_as(input)
    p = input.sigmoid()
    ce = F.binary_cross_entropy_with_logits(input, one_hot, reduction="none")
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    loss = ce * (1 - p_t) ** gamma * (alpha * one_hot + (1 - alpha) * (1 - one_hot))
    if weight is not None:
        loss = loss * weight.view(-1, 1)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


def _load_point_sample() -> types.ModuleType:
    spec = importlib.util.find_spec("mmcv")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("mmcv-lite is not installed: pip install mmcv-lite==2.1.0")
    path = Path(spec.origin).parent / "ops" / "point_sample.py"
    file_spec = importlib.util.spec_from_file_location("mmcv.ops.point_sample", path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def install() -> bool:
    """Register the `mmcv.ops` stand-in if needed. Returns True when it was (or already is) installed."""
    existing = sys.modules.get("mmcv.ops")
    if existing is not None:
        return getattr(existing, SHIM_FLAG, False)
    if importlib.util.find_spec("mmcv") is None or has_compiled_ops():
        return False  # no mmcv at all (segmentation unused) or full mmcv: nothing to do
    point_sample = _load_point_sample()
    ops = types.ModuleType("mmcv.ops", "minr's pure-PyTorch stand-in for the mmcv ops that mmseg imports")
    ops.point_sample = point_sample.point_sample
    ops.bilinear_grid_sample = point_sample.bilinear_grid_sample
    ops.sigmoid_focal_loss = sigmoid_focal_loss
    setattr(ops, SHIM_FLAG, True)

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} needs compiled mmcv (not needed by minr's segmentation)")

    ops.__getattr__ = __getattr__
    # mmcv's transformer bricks try this op at import (whenever mmseg's registry loads its models) and warn that it
    # needs full mmcv: true, and by design here (no minr model uses it). Only that one message is silenced.
    warnings.filterwarnings(
        "ignore", message=r"Fail to import ``MultiScaleDeformableAttention``", category=UserWarning, module=r"mmcv\."
    )
    sys.modules["mmcv.ops"] = ops
    sys.modules["mmcv.ops.point_sample"] = point_sample
    import mmcv

    mmcv.ops = ops
    # mmcv-lite cannot import its compiled deformable attention, which no minr model uses; mmcv says so on import.
    # Only that notice, from that module, is silenced: every other warning still shows.
    warnings.filterwarnings(
        "ignore",
        message="Fail to import ``MultiScaleDeformableAttention``",
        category=UserWarning,
        module=r"mmcv\.cnn\.bricks\.transformer",
    )
    return True
