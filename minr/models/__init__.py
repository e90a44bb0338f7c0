"""The model registry: presets are short functions, looked up by name (`create_model("ginr_tiny")`).

Each preset also carries its training recipe (docs/METHOD.md#training-recipes): overrides applied before the user's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from minr.errors import MinrError
from minr.models.base import Encoder, EncoderInfo, FeatureKind, PretrainOutput
from minr.models.hyper import HyperINR
from minr.models.mae import MAE

__all__ = [
    "MODEL_CLASSES",
    "Encoder",
    "EncoderInfo",
    "FeatureKind",
    "HyperINR",
    "MAE",
    "PretrainOutput",
    "create_model",
    "get_spec",
    "list_models",
]
MODEL_CLASSES: dict[str, type[Encoder]] = {"minr": HyperINR, "mae": MAE}  # family -> class


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(recipe: dict[str, Any], description: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[fn.__name__] = ModelSpec(fn.__name__, fn, recipe, description)
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise MinrError(f"unknown model {name!r}; choose one of: {', '.join(list_models())} (`minrctl models`)")
    return _REGISTRY[name]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; `overrides` replace preset constructor arguments."""
    spec = get_spec(name)
    try:
        return spec.build(**overrides)
    except TypeError as e:
        raise MinrError(f"model {name!r} does not accept these model_args {sorted(overrides)}: {e}") from None


# -- recipes (docs/METHOD.md#training-recipes); tiny ones are scaled to minutes on 2 CPU cores ---------------------
_TRANSINR = {
    "optim.name": "adam",
    "optim.lr": 1e-4,
    "optim.schedule": "step",
    "optim.decay_at": 0.8,
    "train.batch_size": 16,
    "train.epochs": 400,
    "mask.patch": 14,
}
_GINR = {
    "optim.name": "adam",
    "optim.lr": 1e-4,
    "optim.schedule": "constant",
    "train.batch_size": 32,
    "train.epochs": 400,
    "mask.patch": 14,
}
_MAE = {
    "optim.name": "adamw",
    "optim.lr": 1.5e-4 * 4096 / 256,
    "optim.betas": (0.9, 0.95),
    "optim.weight_decay": 0.05,
    "optim.schedule": "cosine",
    "optim.warmup_fraction": 0.05,
    "train.batch_size": 4096,
    "train.epochs": 800,
    "mask.patch": 14,
}
_TINY = {"train.batch_size": 64, "train.epochs": 1, "mask.patch": 4}

# -- MINR -------------------------------------------------------------------------------------------------
_MINR_PAPER = dict(
    image_size=182,
    in_chans=3,
    patch_size=9,
    patch_padding=1,
    embed_dim=768,
    depth=6,
    num_heads=12,
    inr_hidden=256,
    fourier_freqs=64,
    tokens_per_layer=64,
    ginr_rank=256,
)
_MINR_TINY = dict(
    image_size=28,
    in_chans=1,
    patch_size=4,
    embed_dim=128,
    depth=4,
    num_heads=4,
    inr_hidden=64,
    fourier_freqs=16,
    tokens_per_layer=16,
    ginr_rank=64,
)


# GINR's transformer has q/k/v biases and residual dropout 0.1; its code holds the frequencies as a frozen parameter
_GINR_ARCH = dict(variant="ginr", qkv_bias=True, drop=0.1, frequencies="frozen")


@register_model(_TRANSINR, "TransINR hypernetwork, 182 px RGB (44.5 M)")
def transinr_paper(**kw: Any) -> HyperINR:
    return HyperINR(**{**_MINR_PAPER, "variant": "transinr", "fourier_sigma": 1024, **kw})


# ginr-ipc's Imagenette config (the recipe this preset follows: sigma 128) jitters the training coordinates; its
# CelebA config (sigma 64) does not: for CelebA use --set model_args.fourier_sigma=64 --set train.coord_noise=none.
@register_model({**_GINR, "train.coord_noise": "coordwise"}, "GINR hypernetwork, 182 px RGB (43.7 M)")
def ginr_paper(**kw: Any) -> HyperINR:
    return HyperINR(**{**_MINR_PAPER, **_GINR_ARCH, "fourier_sigma": 128, **kw})


@register_model({**_TRANSINR, **_TINY, "optim.lr": 1e-3}, "TransINR, 28 px grayscale, for CPU runs")
def transinr_tiny(**kw: Any) -> HyperINR:
    return HyperINR(**{**_MINR_TINY, "variant": "transinr", "fourier_sigma": 32, **kw})


@register_model({**_GINR, **_TINY, "optim.lr": 1e-3}, "GINR, 28 px grayscale, for CPU runs")
def ginr_tiny(**kw: Any) -> HyperINR:
    return HyperINR(**{**_MINR_TINY, **_GINR_ARCH, "fourier_sigma": 32, **kw})


# -- MAE --------------------------------------------------------------------------------------------------
_MAE_DECODER = dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)


@register_model(_MAE, "MAE ViT-Base, patch 14, 182 px RGB")
def mae_base_paper(**kw: Any) -> MAE:
    return MAE(
        **{
            "image_size": 182,
            "in_chans": 3,
            "patch_size": 14,
            "embed_dim": 768,
            "depth": 12,
            "num_heads": 12,
            **_MAE_DECODER,
            **kw,
        }
    )


@register_model(_MAE, "MAE ViT-Large, patch 14, 182 px RGB")
def mae_large_paper(**kw: Any) -> MAE:
    return MAE(
        **{
            "image_size": 182,
            "in_chans": 3,
            "patch_size": 14,
            "embed_dim": 1024,
            "depth": 24,
            "num_heads": 16,
            **_MAE_DECODER,
            **kw,
        }
    )


@register_model({**_MAE, **_TINY, "optim.lr": 1e-3}, "MAE, 28 px grayscale, encoder as wide as the tiny MINRs")
def mae_tiny(**kw: Any) -> MAE:
    return MAE(
        **{
            "image_size": 28,
            "in_chans": 1,
            "patch_size": 4,
            "embed_dim": 128,
            "depth": 4,
            "num_heads": 4,
            "decoder_dim": 64,
            "decoder_depth": 2,
            "decoder_heads": 4,
            **kw,
        }
    )
