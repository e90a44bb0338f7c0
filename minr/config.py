"""Typed, frozen, self-validating run configuration, with dotted overrides and YAML serialisation.

A `PretrainConfig` is built from a model preset's recipe, then user overrides (`--set optim.lr=3e-4`) are
applied with `apply_overrides`. Every run directory stores the resolved config as YAML.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from minr.errors import MinrError

MASK_KINDS = ("random", "bernoulli", "block")
MAX_INT = 2**63 - 1  # the largest integer a config holds (seeds, counts): what torch, numpy and JSON readers take


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
    compile: bool = False  # torch.compile the model (its forward and backward); the same weights' names

    def __post_init__(self) -> None:
        _check(self.epochs is None or self.epochs > 0, f"train.epochs must be positive (or null), got {self.epochs}")
        _check(
            self.epochs is not None or self.max_steps is not None,
            "train.epochs is null, so train.max_steps must bound the run; set one of them",
        )
        _check(0 <= self.seed <= MAX_INT, f"train.seed must be in [0, 2^63-1], got {self.seed}")
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


def type_name(tp: Any) -> str:
    """A field's declared type in words: `int | None` -> "an integer or null"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}" if len(set(args)) == 1 else f"a list of {len(args)} values"
    if dataclasses.is_dataclass(tp) or origin is dict:
        return "a mapping"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(tp: Any) -> str:
    return {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(tp, "values")


def _show(value: Any) -> str:
    """A value much as the user wrote it (YAML's null, true and false), cut short."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _wrong(key: str, tp: Any, value: Any) -> MinrError:
    return MinrError(f"{key}: expected {type_name(tp)}, got {_show(value)}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a parsed YAML value to the field's declared type, or a one-line error naming the key, the expected
    type and the value. Numbers convert only upwards (an int is a valid float, a float is not a valid int)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                with contextlib.suppress(MinrError):
                    return _coerce(value, arg, key)
        raise _wrong(key, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _wrong(key, tp, value)
        return from_dict(tp, value, f"{key}.")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise _wrong(key, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise MinrError(f"{key}: expected {type_name(tp)}, got {len(value)} value(s): {_show(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise _wrong(key, tp, value) from None
    if tp is float and number:
        return float(value)
    if tp is int and number and isinstance(value, int):
        if not -MAX_INT <= value <= MAX_INT:  # torch, numpy and JSON readers hold 64-bit integers
            raise MinrError(f"{key}: {value} is out of range; integers here lie within +-(2^63-1)")
        return value
    if (tp is bool and isinstance(value, bool)) or tp is Any:
        return value
    if tp is str and (isinstance(value, str) or number):
        return str(value)
    if origin is dict and isinstance(value, dict):
        return value
    raise _wrong(key, tp, value)


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a dict (a preset, a checkpoint's metadata, a merged override),
    checking its keys and each value's declared type; the dataclass then checks the values' ranges."""
    if not isinstance(data, dict):
        raise _wrong(prefix.rstrip(".") or cls.__name__, cls, data)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(data) - set(names)
    if unknown:
        raise MinrError(f"unknown config key {prefix}{sorted(unknown)[0]}; valid keys: {', '.join(sorted(names))}")
    return cls(**{name: _coerce(value, hints[name], prefix + name) for name, value in data.items()})


ALL_KEYS = "see `minrctl pretrain --dry-run` for every key"  # the bench names its own command instead


def _field(cls: type, key: str) -> tuple[list[str], Any]:
    """The path in `to_dict(cfg)` and the declared type of dotted `key`: fields of nested dataclasses, then (inside
    a dict-typed field such as `model_args`) one key holding the rest, dots included."""
    parts, path, tp = key.split("."), [], cls
    while parts:
        if not dataclasses.is_dataclass(tp):
            if typing.get_origin(tp) is dict:
                return [*path, ".".join(parts)], typing.get_args(tp)[1]
            raise MinrError(
                f"unknown config key {key!r}: {'.'.join(path)} is a single value, not a section; {ALL_KEYS}"
            )
        hints, part = typing.get_type_hints(tp), parts.pop(0)
        if part not in hints:
            where = f"in {'.'.join(path)}" if path else "at the top"
            valid = ", ".join(f.name for f in dataclasses.fields(tp))
            raise MinrError(f"unknown config key {key!r}; the keys {where} are {valid} ({ALL_KEYS})")
        path.append(part)
        tp = hints[part]
    return path, tp


def check_override(cls: type, key: str, value: Any) -> list[str]:
    """Check one dotted override against the declared fields of config class `cls`, before any config is built
    (the CLI calls this before importing torch): the key names a field; a section (or a dict field such as
    `model_args`) takes only a mapping, merged into it; a value has the field's declared type. Returns the key's
    path in `to_dict` form."""
    path, tp = _field(cls, key)
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            first = dataclasses.fields(tp)[0].name if dataclasses.is_dataclass(tp) else "KEY"
            given = "" if value is None else _show(value)
            raise MinrError(
                f"--set {key}={given}: {key} is a section, not a value; set its keys one at a time "
                f"(--set {key}.{first}=...) or merge a mapping into it (--set '{key}={{{first}: ...}}')"
            )
        return path
    try:
        _coerce(value, tp, key)
    except MinrError as e:
        raise MinrError(f"--set {e}") from None
    return path


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Apply dotted overrides (`{"mask.ratio": 0.6, "model_args.depth": 2}`), each checked where it enters
    (`check_override`): a scalar or an empty value never resets a section, a mapping is merged into it. Then the
    whole config re-validates."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        path = check_override(type(cfg), key, value)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        merge = isinstance(value, dict) and isinstance(node.get(path[-1]), dict | None)
        node[path[-1]] = _merged(node.get(path[-1]) or {}, value) if merge else value
    return from_dict(type(cfg), data)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` merged into `old`, nested mappings key by key."""
    out = dict(old)
    for k, v in new.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


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
