"""`minrctl export CKPT --to mmseg|timm`: hand a pretrained encoder to the wider ecosystem.

mmseg: MAE becomes mmseg's own `MAE` backbone (keys converted beit2mmseg-style; its layer scales and relative
position bias, absent in MAE, are written as the identity: ones and zeros); MINR becomes minr's registered
`MinrBackbone` (the config imports it). Either way the weights are checked against the backbone that mmseg
builds from the written config (no missing, no unexpected keys) before anything is written, and a ready
UPerNet / ADE20K / 512-crop config with the MAE schedule is written beside them.
timm: MAE loads into `timm.models.VisionTransformer` with strict=True; MINR has no timm architecture.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

import finetune  # noqa: F401  (mmcv.ops stand-in before mmseg)
from finetune.mmseg_config import IMAGENET, backbone_levels, build_model, preprocessor, segmentor_config
from finetune.seg_backbone import MinrBackbone
from minr.build import model_from_checkpoint
from minr.config import PretrainConfig
from minr.errors import MinrError
from minr.io import atomic_write_bytes, atomic_write_text, publish, tmp_path, writing
from minr.models import Encoder

ENC = MinrBackbone.ENCODER_PREFIX  # where MINR's encoder lies in the backbone that mmseg builds
_MAE_KEYS = [
    (r"^patch_embed\.proj\.", "patch_embed.projection."),
    (r"^blocks\.", "layers."),
    (r"\.norm1\.", ".ln1."),
    (r"\.norm2\.", ".ln2."),
    (r"\.mlp\.fc1\.", ".ffn.layers.0.0."),
    (r"\.mlp\.fc2\.", ".ffn.layers.1."),
]
_IDENTITY = re.compile(r"(gamma_[12]|relative_position_bias_table|relative_position_index)$")


def mae_to_mmseg_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm/MAE encoder keys -> mmseg MAE backbone keys (decoder and final norm dropped: final_norm=False)."""
    out = {}
    for k, v in state.items():
        if k.startswith(("decoder_", "mask_token", "norm.")):
            continue
        for pattern, repl in _MAE_KEYS:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def _backbone_cfg(model: Encoder, cfg: PretrainConfig, weights: str) -> dict[str, Any]:
    info = model.info()
    levels = list(backbone_levels(info, frozen=False))
    init = {"type": "Pretrained", "checkpoint": weights}
    if info.family == "mae":  # mmseg's own MAE backbone
        return {
            "type": "MAE",
            "img_size": (512, 512),
            "patch_size": model.patch_size,
            "in_channels": info.in_chans,
            "embed_dims": info.width,
            "num_layers": info.depth,
            "num_heads": model.blocks[0].attn.num_heads,
            "mlp_ratio": 4,
            "norm_cfg": {"type": "LN", "eps": 1e-6},  # MAE's LayerNorm eps (mmseg defaults to 1e-5)
            "init_values": 1.0,
            "drop_path_rate": 0.1,
            "out_indices": levels,
            "init_cfg": init,
        }
    return {
        "type": "MinrBackbone",
        "model_name": cfg.model,
        "model_args": cfg.model_args,
        "out_indices": levels,
        "feature": "tokens",
        "drop_path_rate": 0.1,
        "init_cfg": init,
    }


def _ade20k_loaders() -> dict[str, Any]:
    """mmseg's ADE20K 512-crop pipelines and loaders (batch 2 per GPU x 8 GPUs = 16), label 0 ignored."""
    train_pipe = [
        {"type": "LoadImageFromFile"},
        {"type": "LoadAnnotations", "reduce_zero_label": True},
        {"type": "RandomResize", "scale": (2048, 512), "ratio_range": (0.5, 2.0), "keep_ratio": True},
        {"type": "RandomCrop", "crop_size": (512, 512), "cat_max_ratio": 0.75},
        {"type": "RandomFlip", "prob": 0.5},
        {"type": "PhotoMetricDistortion"},
        {"type": "PackSegInputs"},
    ]
    test_pipe = [
        {"type": "LoadImageFromFile"},
        {"type": "Resize", "scale": (2048, 512), "keep_ratio": True},
        {"type": "LoadAnnotations", "reduce_zero_label": True},
        {"type": "PackSegInputs"},
    ]

    def loader(split: str, pipe: list, batch: int, shuffle: bool) -> dict[str, Any]:
        return {
            "batch_size": batch,
            "num_workers": 4,
            "persistent_workers": True,
            "sampler": {"type": "InfiniteSampler" if shuffle else "DefaultSampler", "shuffle": shuffle},
            "dataset": {
                "type": "ADE20KDataset",
                "data_root": "data/ade/ADEChallengeData2016",
                "data_prefix": {"img_path": f"images/{split}", "seg_map_path": f"annotations/{split}"},
                "pipeline": pipe,
            },
        }

    val = loader("validation", test_pipe, 1, False)
    return {"train_dataloader": loader("training", train_pipe, 2, True), "val_dataloader": val, "test_dataloader": val}


def _mae_schedule(depth: int) -> dict[str, Any]:
    """AdamW lr 1e-4, wd 0.05, layer decay 0.65, 1,500 warm-up iterations then poly to 160k, checkpoints and
    validation every 16k."""
    return {
        "optim_wrapper": {
            "type": "AmpOptimWrapper",
            "optimizer": {"type": "AdamW", "lr": 1e-4, "betas": (0.9, 0.999), "weight_decay": 0.05},
            "constructor": "LayerDecayOptimizerConstructor",
            "paramwise_cfg": {"num_layers": depth, "layer_decay_rate": 0.65},
        },
        "param_scheduler": [
            {"type": "LinearLR", "start_factor": 1e-6, "by_epoch": False, "begin": 0, "end": 1500},
            {"type": "PolyLR", "power": 1.0, "begin": 1500, "end": 160000, "eta_min": 0.0, "by_epoch": False},
        ],
        "train_cfg": {"type": "IterBasedTrainLoop", "max_iters": 160000, "val_interval": 16000},
        "val_cfg": {"type": "ValLoop"},
        "test_cfg": {"type": "TestLoop"},
        "default_hooks": {
            "checkpoint": {"type": "CheckpointHook", "by_epoch": False, "interval": 16000},
            "logger": {"type": "LoggerHook", "interval": 50},
        },
    }


def mmseg_config(model: Encoder, cfg: PretrainConfig, weights: str) -> dict[str, Any]:
    """UPerNet on ADE20K, 512 crop, AdamW lr 1e-4 wd 0.05 layer decay 0.65, 1,500 warm-up iters then poly,
    160k iterations, batch 16 (mmseg's mae-base_upernet_8xb2-amp-160k_ade20k-512x512)."""
    info = model.info()
    c = info.in_chans
    data = preprocessor(c, info.size_divisor, mean=IMAGENET["mean"][:c], std=IMAGENET["std"][:c], size=(512, 512))
    data["bgr_to_rgb"] = True
    segmentor = segmentor_config(
        _backbone_cfg(model, cfg, weights),
        channels=info.width,
        num_classes=150,
        frozen=False,
        token_pyramid=True,
        head_channels=768,
        aux_channels=256,
        data_preprocessor=data,
        avg_non_ignore=False,  # mmseg's published recipe, for numbers comparable with its 48.13 mIoU
    )
    segmentor["test_cfg"] = {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}  # as mmseg's config
    out = {"default_scope": "mmseg", "model": segmentor, **_ade20k_loaders()}
    out["val_evaluator"] = out["test_evaluator"] = {"type": "IoUMetric", "iou_metrics": ["mIoU"]}
    out |= _mae_schedule(info.depth) | {"env_cfg": {"dist_cfg": {"backend": "nccl"}}}
    if info.family == "minr":  # mmseg must import minr's backbone; mmseg's layer decay needs its own naming
        out["custom_imports"] = {"imports": ["finetune.seg_backbone"], "allow_failed_imports": False}
        out["optim_wrapper"].pop("constructor")
        out["optim_wrapper"].pop("paramwise_cfg")
    return out


def _mmseg_weights(model: Encoder, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """Backbone weights in mmseg's names, checked against the backbone that mmseg builds."""
    bb = _backbone_cfg(model, cfg, "")
    bb.pop("init_cfg")
    mae = model.info().family == "mae"
    if mae:
        bb["img_size"] = (model.image_size, model.image_size)
    target = build_model(bb).state_dict()
    if mae:
        weights = mae_to_mmseg_keys(model.state_dict())
        for k, v in target.items():  # identity for BEiT-only parts: layer scale 1, relative position bias 0
            if k not in weights and _IDENTITY.search(k):
                weights[k] = v if k.endswith("index") else (torch.ones_like(v) if "gamma" in k else torch.zeros_like(v))
    else:
        weights = {f"{ENC}{k}": v for k, v in model.state_dict().items()}
    missing, unexpected = sorted(target.keys() - weights.keys()), sorted(weights.keys() - target.keys())
    bad = [k for k in missing + unexpected if not k.startswith(ENC) or model.is_encoder_parameter(k[len(ENC) :])]
    if bad:
        raise MinrError(
            f"export: backbone keys do not match mmseg's (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}); nothing was written"
        )
    shapes = [k for k in weights if k in target and weights[k].shape != target[k].shape]
    if shapes:
        raise MinrError(f"export: shape mismatch for {shapes[0]}; nothing was written")
    return {k: v.detach().clone().contiguous() for k, v in weights.items()}


def export(ckpt: str, out_dir: str | Path, *, to: str) -> dict[str, str]:
    if to not in ("mmseg", "timm"):
        raise MinrError(f"--to must be mmseg or timm, got {to!r}")
    model, cfg, _ = model_from_checkpoint(ckpt)
    out = Path(out_dir)
    if to == "timm":
        return _export_timm(model, out)
    weights = _mmseg_weights(model, cfg)
    buf = io.BytesIO()
    torch.save(weights, buf)  # plain tensors: loads with torch.load(weights_only=True), as mmengine does
    weights_path = out / "backbone.pth"
    atomic_write_bytes(weights_path, buf.getvalue())
    from mmengine.config import Config

    config_path = out / f"{cfg.model}_upernet_ade20k-512x512.py"
    atomic_write_text(config_path, Config(mmseg_config(model, cfg, str(weights_path.resolve()))).pretty_text)
    return {"weights": str(weights_path), "config": str(config_path)}


def timm_kwargs(model) -> dict[str, Any]:
    info = model.info()
    return {
        "img_size": info.image_size,
        "patch_size": model.patch_size,
        "in_chans": info.in_chans,
        "embed_dim": info.width,
        "depth": info.depth,
        "num_heads": model.blocks[0].attn.num_heads,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "num_classes": 0,
        "global_pool": "token",
    }


def _export_timm(model: Encoder, out: Path) -> dict[str, str]:
    if model.info().family != "mae":
        raise MinrError(
            "--to timm: MINR hypernetworks (padded tokenizer, weight tokens, INR heads) have no timm "
            "architecture; use --to mmseg, or the encoder through minr's own interface"
        )
    from functools import partial

    from timm.models.vision_transformer import VisionTransformer

    weights = {k: v.contiguous() for k, v in model.state_dict().items() if model.is_encoder_parameter(k)}
    vit = VisionTransformer(**timm_kwargs(model), norm_layer=partial(torch.nn.LayerNorm, eps=1e-6))
    vit.load_state_dict(weights, strict=True)  # refuses before writing when anything differs
    path = out / "model.safetensors"
    tmp = tmp_path(path)
    with writing(path):  # an unwritable --out, or a full disk, is one line that names it
        out.mkdir(parents=True, exist_ok=True)
        save_file(weights, str(tmp))
    publish(tmp, path)
    atomic_write_text(
        out / "timm_config.json",
        json.dumps({"architecture": "VisionTransformer", "kwargs": timm_kwargs(model), "norm_eps": 1e-6}, indent=2),
    )
    return {"weights": str(path), "config": str(out / "timm_config.json")}
