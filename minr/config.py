"""Typed, frozen, self-validating run configuration, with dotted overrides and YAML serialisation.

A `PretrainConfig` is built from a model preset's recipe, then user overrides (`--set optim.lr=3e-4`) are
applied with `apply_overrides`. Every run directory stores the resolved config as YAML.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from minr.errors import MinrError

MASK_KINDS = ("random", "bernoulli", "block")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise MinrError(msg)


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


@dataclass(frozen=True)
class DataConfig:
    """Which images, which split, how many."""

    name: str = "fashion-mnist"
    root: str | None = None
    val_fraction: float = 0.1
    max_images: int | None = None
    skip_bad_images: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        _check(0 < self.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check(
            self.max_images is None or self.max_images > 0, f"data.max_images must be positive, got {self.max_images}"
        )
        _check(self.workers >= 0, f"data.workers must be >= 0, got {self.workers}")


@dataclass(frozen=True)
class MaskConfig:
    """One masking function for every method: a grid of `patch`-pixel cells, `ratio` of them masked."""

    kind: str = "random"
    ratio: float = 0.75
    patch: int = 4

    def __post_init__(self) -> None:
        _check(self.kind in MASK_KINDS, f"mask.kind must be one of {', '.join(MASK_KINDS)}, got {self.kind!r}")
        _check(0 < self.ratio < 1, f"mask.ratio must be in (0, 1), got {self.ratio}")
        _check(self.patch > 0, f"mask.patch must be positive, got {self.patch}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule (a pure function of the step, see `minr.loop.lr_factor`)."""

    name: str = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    decay_at: float = 0.8
    clip_grad: float | None = None

    def __post_init__(self) -> None:
        _check(self.name in ("adam", "adamw"), f"optim.name must be adam or adamw, got {self.name!r}")
        _check(_finite(self.lr) and self.lr > 0, f"optim.lr must be a positive finite number, got {self.lr}")
        _check(
            self.schedule in ("constant", "step", "cosine", "poly"),
            f"optim.schedule must be constant, step, cosine or poly, got {self.schedule!r}",
        )
        _check(
            len(self.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in self.betas),
            f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}",
        )
        _check(
            _finite(self.weight_decay) and self.weight_decay >= 0,
            f"optim.weight_decay must be >= 0, got {self.weight_decay}",
        )
        _check(0 <= self.warmup_fraction < 1, f"optim.warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        _check(0 < self.decay_at <= 1, f"optim.decay_at must be in (0, 1], got {self.decay_at}")
        _check(
            self.clip_grad is None or (_finite(self.clip_grad) and self.clip_grad > 0),
            f"optim.clip_grad must be positive or null, got {self.clip_grad}",
        )


@dataclass(frozen=True)
class TrainConfig:
    """Budget, batch, seed, device and how often to validate and checkpoint."""

    epochs: int | None = 1  # None: the run is bounded by max_steps alone
    batch_size: int = 64
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    ckpt_every: int = 200
    val_every: int = 1
    val_max_images: int | None = 1000
    render_fraction: float = 1.0
    coord_noise: str = "none"  # "coordwise": jitter each pixel's coordinates by up to half a pixel (ginr-ipc)
    log: str = "csv"
    on_nonfinite: str = "stop"
    keep_checkpoints: tuple[int, ...] = ()  # steps whose weights are kept as checkpoint-stepNNNNNN.safetensors

    def __post_init__(self) -> None:
        _check(self.epochs is None or self.epochs > 0, f"train.epochs must be positive (or null), got {self.epochs}")
        _check(
            self.epochs is not None or self.max_steps is not None,
            "train.epochs is null, so train.max_steps must bound the run; set one of them",
        )
        _check(
            all(isinstance(s, int) and s >= 0 for s in self.keep_checkpoints),
            f"train.keep_checkpoints must be steps >= 0, got {list(self.keep_checkpoints)}",
        )
        _check(self.batch_size > 0, f"train.batch_size must be positive, got {self.batch_size}")
        _check(self.max_steps is None or self.max_steps > 0, f"train.max_steps must be positive, got {self.max_steps}")
        _check(self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}")
        _check(self.ckpt_every > 0, f"train.ckpt_every must be positive, got {self.ckpt_every}")
        _check(self.val_every > 0, f"train.val_every must be >= 1 (epochs between validations), got {self.val_every}")
        _check(
            self.val_max_images is None or self.val_max_images > 0,
            f"train.val_max_images must be positive or null (all), got {self.val_max_images}",
        )
        _check(0 < self.render_fraction <= 1, f"train.render_fraction must be in (0, 1], got {self.render_fraction}")
        _check(
            self.coord_noise in ("none", "coordwise"),
            f"train.coord_noise must be none or coordwise, got {self.coord_noise!r}",
        )
        _check(self.log in ("csv", "tensorboard"), f"train.log must be csv or tensorboard, got {self.log!r}")
        _check(
            self.on_nonfinite in ("stop", "skip"),
            f"train.on_nonfinite must be stop or skip, got {self.on_nonfinite!r}",
        )


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run; `model_args` override the preset's constructor arguments."""

    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (tuples become lists) that YAML and JSON can hold."""
    return yaml.safe_load(yaml.safe_dump(_plain(dataclasses.asdict(cfg))))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a parsed YAML value to the annotated field type, or explain what was expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except MinrError:
                continue
        raise MinrError(f"--set {key}: {value!r} is not a valid {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise MinrError(f"--set {key}: expected a list like [0.9, 0.95], got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise MinrError(f"--set {key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise MinrError(f"--set {key}: expected a number, got {value!r}") from None
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str | int | float):
        return str(value)
    if origin is dict and isinstance(value, dict):
        return value
    raise MinrError(f"--set {key}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a dict, validating keys and types."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise MinrError(f"unknown config key {prefix}{sorted(unknown)[0]}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Apply dotted overrides (`{"mask.ratio": 0.6, "model_args.depth": 2}`) and re-validate."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise MinrError(f"unknown config key {key!r}; see `minrctl pretrain --dry-run` for the keys")
            node = node[part]
        if parts[-1] not in node and parts[0] != "model_args":
            raise MinrError(f"unknown config key {key!r}; see `minrctl pretrain --dry-run` for the keys")
        node[parts[-1]] = value
    return from_dict(type(cfg), data)


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "mask.kind=block"]` -> `{"optim.lr": 3e-4, "mask.kind": "block"}` (values read as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise MinrError(f"--set {item!r}: expected KEY=VALUE, for example --set mask.ratio=0.6")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise MinrError(f"--set {item!r}: cannot read the value ({e.__class__.__name__})") from None
    return out
