"""Configs and models from names, and models back from checkpoints."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from minr.checkpoint import load_checkpoint, read_meta
from minr.config import PretrainConfig, apply_overrides, from_dict
from minr.errors import MinrError
from minr.models import create_model, get_spec


def default_config(model: str, overrides: dict[str, Any] | None = None) -> PretrainConfig:
    """The preset's recipe, then the user's dotted overrides; validated."""
    spec = get_spec(model)
    cfg = apply_overrides(PretrainConfig(model=model), spec.recipe)
    return apply_overrides(cfg, overrides or {})


def build_model(cfg: PretrainConfig) -> nn.Module:
    model = create_model(cfg.model, **cfg.model_args)
    if model.family == "mae" and cfg.mask.patch != model.patch_size:
        raise MinrError(
            f"mask.patch={cfg.mask.patch} but {cfg.model} masks whole {model.patch_size}-px patches; "
            f"use --set mask.patch={model.patch_size} (and the same for the MINR runs you compare with)"
        )
    return model


def model_from_checkpoint(path: str, *, map_location: str | torch.device = "cpu", **model_args: Any):
    """Rebuild the model from the checkpoint alone (`model_args` such as drop_path_rate change only how it runs).
    Returns (model in eval mode, config, checkpoint meta)."""
    ckpt = load_checkpoint(path)
    if "config" not in ckpt.meta:
        raise MinrError(f"{path} is a minr checkpoint but not of a pretrained encoder (no pretraining config)")
    cfg = from_dict(PretrainConfig, ckpt.meta["config"])
    model = create_model(cfg.model, **{**cfg.model_args, **model_args}) if model_args else build_model(cfg)
    missing, unexpected = model.load_state_dict(ckpt.model_state, strict=False)
    if missing or unexpected:
        raise MinrError(f"{path}: weights do not fit {cfg.model} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(map_location).eval(), cfg, ckpt.meta


def encoder_skeleton(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The checkpoint's model without its weights (on the meta device, no memory, no file read beyond the header):
    enough for its family, resolution, channels, depth and width. Returns (model, checkpoint meta)."""
    meta = read_meta(path)
    if "config" not in meta:
        raise MinrError(f"{path} is a minr checkpoint but not of a pretrained encoder (no pretraining config)")
    cfg = from_dict(PretrainConfig, meta["config"])
    with torch.device("meta"):
        return create_model(cfg.model, **cfg.model_args), meta
