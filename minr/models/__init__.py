"""The model registry: presets are short functions, looked up by name (`create_model("ginr_tiny")`).

A preset returns its family's declared arguments (`TransINRArgs`, `GINRArgs`, `MAEArgs`: one frozen dataclass per
family, the model's only constructor argument); a config's `model_args` replace fields of it, checked by
`resolve_model_args` before anything is built. Each preset also carries its training recipe
(docs/METHOD.md#training-recipes): overrides applied before the user's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from minr.errors import MinrError
from minr.models.args import ModelArgs
from minr.models.base import Encoder, EncoderInfo, FeatureKind, PretrainOutput
from minr.models.ginr import GINR, GINRArgs
from minr.models.hyper import HyperINR
from minr.models.mae import MAE, MAEArgs
from minr.models.transinr import TransINR, TransINRArgs

__all__ = [
    "GINR",
    "MAE",
    "MODEL_CLASSES",
    "Encoder",
    "EncoderInfo",
    "FeatureKind",
    "HyperINR",
    "ModelArgs",
    "PretrainOutput",
    "TransINR",
    "create_model",
    "get_spec",
    "list_models",
    "resolve_model_args",
]
MODEL_CLASSES: dict[str, type[Encoder]] = {"minr": HyperINR, "mae": MAE}  # family -> class (its feature kinds)


@dataclass(frozen=True)
class ModelSpec:
    """A preset: its model class, its constructor arguments, its training recipe."""

    name: str
    model_class: type[Encoder]
    args: ModelArgs
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(model_class: type[Encoder], recipe: dict[str, Any], description: str) -> Callable:
    """Register a preset: a function named after it that returns its `model_class.Args`."""

    def wrap(fn: Callable[[], ModelArgs]) -> Callable[[], ModelArgs]:
        args = fn()
        if type(args) is not model_class.Args:
            raise TypeError(f"preset {fn.__name__} returns {type(args).__name__}, not {model_class.Args.__name__}")
        _REGISTRY[fn.__name__] = ModelSpec(fn.__name__, model_class, args, recipe, description)
        return fn

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise MinrError(f"unknown model {name!r}; choose one of: {', '.join(list_models())} (`minrctl models`)")
    return _REGISTRY[name]


def resolve_model_args(name: str, overrides: dict[str, Any] | None = None) -> ModelArgs:
    """A preset's constructor arguments with `overrides` (`model_args` of a config) in place: unknown names, wrong
    types and values out of range are one-line errors, and nothing is built."""
    return get_spec(name).args.with_overrides(overrides or {}, name)


def create_model(name: str, **overrides: Any) -> Encoder:
    """Build a registered model; `overrides` replace preset constructor arguments."""
    return get_spec(name).model_class(resolve_model_args(name, overrides))


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
)
_TINY_ENCODER = dict(image_size=28, in_chans=1, patch_size=4, embed_dim=128, depth=4, num_heads=4)  # MAE's too
_MINR_TINY = dict(**_TINY_ENCODER, inr_hidden=64, fourier_freqs=16)


@register_model(TransINR, _TRANSINR, "TransINR hypernetwork, 182 px RGB (44.5 M)")
def transinr_paper() -> TransINRArgs:
    return TransINRArgs(**_MINR_PAPER, fourier_sigma=1024, tokens_per_layer=64)


# ginr-ipc's Imagenette config (the recipe this preset follows: sigma 128) jitters the training coordinates; its
# CelebA config (sigma 64) does not: for CelebA use --set model_args.fourier_sigma=64 --set train.coord_noise=none.
@register_model(GINR, {**_GINR, "train.coord_noise": "coordwise"}, "GINR hypernetwork, 182 px RGB (43.7 M)")
def ginr_paper() -> GINRArgs:
    return GINRArgs(**_MINR_PAPER, fourier_sigma=128, ginr_rank=256)


@register_model(TransINR, {**_TRANSINR, **_TINY, "optim.lr": 1e-3}, "TransINR, 28 px grayscale, for CPU runs")
def transinr_tiny() -> TransINRArgs:
    return TransINRArgs(**_MINR_TINY, fourier_sigma=32, tokens_per_layer=16)


@register_model(GINR, {**_GINR, **_TINY, "optim.lr": 1e-3}, "GINR, 28 px grayscale, for CPU runs")
def ginr_tiny() -> GINRArgs:
    return GINRArgs(**_MINR_TINY, fourier_sigma=32, ginr_rank=64)


# -- MAE --------------------------------------------------------------------------------------------------
_MAE_PAPER = dict(image_size=182, in_chans=3, patch_size=14, decoder_dim=512, decoder_depth=8, decoder_heads=16)


@register_model(MAE, _MAE, "MAE ViT-Base, patch 14, 182 px RGB")
def mae_base_paper() -> MAEArgs:
    return MAEArgs(**_MAE_PAPER, embed_dim=768, depth=12, num_heads=12)


@register_model(MAE, _MAE, "MAE ViT-Large, patch 14, 182 px RGB")
def mae_large_paper() -> MAEArgs:
    return MAEArgs(**_MAE_PAPER, embed_dim=1024, depth=24, num_heads=16)


@register_model(MAE, {**_MAE, **_TINY, "optim.lr": 1e-3}, "MAE, 28 px grayscale, encoder as wide as the tiny MINRs")
def mae_tiny() -> MAEArgs:
    return MAEArgs(**_TINY_ENCODER, decoder_dim=64, decoder_depth=2, decoder_heads=4)
