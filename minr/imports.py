"""Official MAE weights (facebookresearch/mae's `mae_pretrain_vit_base.pth` layout) as a minr checkpoint.

The file is read with `torch.load(weights_only=True)`: plain tensors in dicts load, anything that would run code is
refused. The architecture is read off the tensors (patch size, channels, width, depth, grid; the decoder's too
when the file has one, as the `mae_visualize_*` files do); the number of heads cannot be, so it comes from the
width (ViT-B 12, ViT-L and ViT-H 16) or `num_heads`. minr's MAE keeps MAE's own sin-cos channel order, so the
imported positions stay right at other input sizes, and it normalises inputs with ImageNet statistics as MAE
does. A file without a decoder gets a freshly initialised one (recorded in the checkpoint).
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from minr.build import default_config
from minr.checkpoint import checkpoint_meta, save_checkpoint
from minr.config import to_dict
from minr.errors import MinrError
from minr.io import git_sha, input_file, output_location, writing
from minr.models import create_model
from minr.models.mae import mae_sincos

HEADS = {768: 12, 1024: 16, 1280: 16}
PRESETS = {768: "mae_base_paper", 1024: "mae_large_paper"}


def read_official(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict inside an official MAE file, loaded without unpickling arbitrary objects."""
    path = input_file(path, "MAE checkpoint", look_for="*.pth")
    try:  # MAE's own training checkpoints also carry their argparse.Namespace: plain attributes, safe to build
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise MinrError(f"{path} is not a plain-tensor MAE checkpoint; refused without running it ({first})") from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    shapes = {"patch_embed.proj.weight": 4, "pos_embed": 3, "blocks.0.attn.qkv.weight": 2}
    if not isinstance(state, dict) or any(getattr(state.get(k), "ndim", None) != n for k, n in shapes.items()):
        raise MinrError(
            f"{path} holds no MAE weights (no ViT patch_embed / pos_embed / blocks in it or in its 'model')"
        )
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def architecture(state: dict[str, torch.Tensor], num_heads: int | None = None) -> tuple[str, dict[str, Any]]:
    """(preset name, model_args) that rebuild the model these tensors belong to."""
    width, chans, patch, _ = state["patch_embed.proj.weight"].shape
    grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    if width not in PRESETS:
        raise MinrError(f"no MAE preset has width {width}; minr registers ViT-B (768) and ViT-L (1024)")
    heads = num_heads or HEADS[width]
    if width % heads:
        raise MinrError(f"--num-heads {heads} does not divide the width {width}")
    args: dict[str, Any] = {
        "image_size": grid * patch,
        "in_chans": chans,
        "patch_size": patch,
        "embed_dim": width,
        "depth": depth,
        "num_heads": heads,
        "input_norm": "imagenet",
        "norm_pix_loss": True,  # how the released MAE models were trained
    }
    if "decoder_embed.weight" in state:
        args["decoder_dim"] = state["decoder_embed.weight"].shape[0]
        args["decoder_depth"] = 1 + max(
            int(m.group(1)) for k in state if (m := re.match(r"decoder_blocks\.(\d+)\.", k))
        )
    return PRESETS[width], args


def import_mae(path: str | Path, out: str | Path, *, num_heads: int | None = None, norm_pix_loss: bool = True) -> Path:
    """Write the official MAE file at `path` as a minr pretraining checkpoint `out` (step 0). Returns `out`."""
    out = output_location(out, inputs=[input_file(path, "MAE checkpoint")], folder=False)
    state = read_official(path)
    preset, args = architecture(state, num_heads)
    args["norm_pix_loss"] = norm_pix_loss
    model = create_model(preset, **args)
    grid = args["image_size"] // args["patch_size"]
    if not torch.allclose(state["pos_embed"][0, 1:].float(), mae_sincos(grid, grid, args["embed_dim"]), atol=1e-5):
        raise MinrError(f"{path}: its pos_embed is not MAE's fixed sin-cos table; is it an MAE checkpoint?")
    own = model.state_dict()
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if k not in state and model.is_encoder_parameter(k))
    wrong = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if unexpected or missing or wrong:
        raise MinrError(
            f"{path} does not fit {preset} {args} (unexpected {unexpected[:3]}, missing {missing[:3]}, "
            f"wrong shape {wrong[:3]})"
        )
    model.load_state_dict(state, strict=False)
    has_decoder = any(k.startswith("decoder_") for k in state)
    overrides = {f"model_args.{k}": v for k, v in args.items()} | {"mask.patch": args["patch_size"]}
    cfg = default_config(preset, overrides)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    meta = checkpoint_meta(
        "pretrain",
        model=preset,
        model_args=cfg.model_args,
        family=model.family,
        config=to_dict(cfg),
        step=0,
        epoch=0,
        git_sha=git_sha(),
        imported_from=str(path),
        imported_sha256=digest,
        decoder="imported" if has_decoder else "initialised (the file has the encoder only)",
    )
    with writing(out):
        out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model_state=model.state_dict(), meta=meta)
    return out
