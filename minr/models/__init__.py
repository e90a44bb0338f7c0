"""The model registry: presets are short functions, looked up by name (`create_model("ginr_tiny")`).

A preset returns its constructor arguments, which its architecture's declared arguments type and check (`TransINRArgs`,
`GINRArgs`, `MAEArgs`: one frozen dataclass per family, the model's only constructor argument, built when first
needed); a config's `model_args` replace fields of it, checked by
`resolve_model_args` before anything is built. Each preset also carries its training recipe
(docs/METHOD.md#training-recipes): overrides applied before the user's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from minr.errors import MinrError
from minr.models.args import ModelArgs

if TYPE_CHECKING:
    from minr.models.base import Encoder

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

# The model modules import torch and timm (3-4 s): they are imported when a class is first asked for, so the
# registry's names, recipes and descriptions (`minrctl models`, `--help`, an unknown name) answer without them.
_LAZY = {
    "GINR": "ginr",
    "GINRArgs": "ginr",
    "TransINR": "transinr",
    "TransINRArgs": "transinr",
    "MAE": "mae",
    "MAEArgs": "mae",
    "HyperINR": "hyper",
    "HyperINRArgs": "hyper",
    "Encoder": "base",
    "EncoderInfo": "base",
    "FeatureKind": "base",
    "PretrainOutput": "base",
}
_ARCHITECTURES = {"transinr": ("TransINR", "minr"), "ginr": ("GINR", "minr"), "mae": ("MAE", "mae")}  # class, family


def __getattr__(name: str) -> Any:
    if name == "MODEL_CLASSES":  # family -> class (its feature kinds)
        return {"minr": __getattr__("HyperINR"), "mae": __getattr__("MAE")}
    if name in _LAZY:
        return getattr(importlib.import_module(f"minr.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A preset: its architecture, its constructor arguments, its training recipe. `params` is the parameter count
    the preset builds, declared so that listing models builds nothing (tests/test_models.py checks it)."""

    name: str
    architecture: str  # a key of _ARCHITECTURES: the module and class that build it
    kwargs: dict[str, Any]
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    params: int = 0

    @property
    def family(self) -> str:
        return _ARCHITECTURES[self.architecture][1]

    @property
    def model_class(self) -> type[Encoder]:
        return __getattr__(_ARCHITECTURES[self.architecture][0])

    @cached_property
    def args(self) -> ModelArgs:
        """The preset's arguments as its family declares them (`model_class.Args`, typed and range-checked)."""
        return self.model_class.Args(**self.kwargs)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(architecture: str, recipe: dict[str, Any], description: str, *, params: int) -> Callable:
    """Register a preset: a function named after it that returns its architecture's constructor arguments."""

    def wrap(fn: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        _REGISTRY[fn.__name__] = ModelSpec(fn.__name__, architecture, fn(), recipe, description, params)
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


@register_model("transinr", _TRANSINR, "TransINR hypernetwork, 182 px RGB (44.5 M)", params=44_462_851)
def transinr_paper() -> dict[str, Any]:
    return dict(**_MINR_PAPER, fourier_sigma=1024, tokens_per_layer=64)


# ginr-ipc's Imagenette config (the recipe this preset follows: sigma 128) jitters the training coordinates; its
# CelebA config (sigma 64) does not: for CelebA use --set model_args.fourier_sigma=64 --set train.coord_noise=none.
_GINR_PAPER_RECIPE = {**_GINR, "train.coord_noise": "coordwise"}


@register_model("ginr", _GINR_PAPER_RECIPE, "GINR hypernetwork, 182 px RGB (43.7 M)", params=43_746_371)
def ginr_paper() -> dict[str, Any]:
    return dict(**_MINR_PAPER, fourier_sigma=128, ginr_rank=256)


def _tiny_recipe(lr: float, warmup: float) -> dict[str, Any]:
    """A tiny preset's recipe: the paper recipe's optimiser and schedule, at the learning rate and warm-up that the
    equal per-model search chose (`benchmarks/recipe_search.py`, `benchmarks/results/recipes`: lr {3e-4, 1e-3,
    3e-3, 1e-2} x warm-up {0, 0.05}, each at the cpu-full budget, the lowest validation loss)."""
    return {**_TINY, "optim.lr": lr, "optim.warmup_fraction": warmup}


@register_model(
    "transinr", {**_TRANSINR, **_tiny_recipe(3e-3, 0.05)}, "TransINR, 28 px grayscale, for CPU runs", params=867_585
)
def transinr_tiny() -> dict[str, Any]:
    return dict(**_MINR_TINY, fourier_sigma=32, tokens_per_layer=16)


@register_model("ginr", {**_GINR, **_tiny_recipe(1e-3, 0.05)}, "GINR, 28 px grayscale, for CPU runs", params=839_057)
def ginr_tiny() -> dict[str, Any]:
    return dict(**_MINR_TINY, fourier_sigma=32, ginr_rank=64)


# -- MAE --------------------------------------------------------------------------------------------------
_MAE_PAPER = dict(image_size=182, in_chans=3, patch_size=14, decoder_dim=512, decoder_depth=8, decoder_heads=16)


@register_model("mae", _MAE, "MAE ViT-Base, patch 14, 182 px RGB", params=111_642_700)
def mae_base_paper() -> dict[str, Any]:
    return dict(**_MAE_PAPER, embed_dim=768, depth=12, num_heads=12)


@register_model("mae", _MAE, "MAE ViT-Large, patch 14, 182 px RGB", params=329_223_756)
def mae_large_paper() -> dict[str, Any]:
    return dict(**_MAE_PAPER, embed_dim=1024, depth=24, num_heads=16)


_MAE_TINY = "MAE, 28 px grayscale, encoder as wide as the tiny MINRs"


@register_model("mae", {**_MAE, **_tiny_recipe(3e-3, 0.05)}, _MAE_TINY, params=914_704)
def mae_tiny() -> dict[str, Any]:
    return dict(**_TINY_ENCODER, decoder_dim=64, decoder_depth=2, decoder_heads=4)
