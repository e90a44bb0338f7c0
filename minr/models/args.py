"""Each model family's constructor arguments, declared once: a frozen dataclass that checks its own values.

A preset is one instance of its family's dataclass; `--set model_args.X=V` replaces fields of it through
`with_overrides`, which refuses names the family does not have (listing the ones it has), values of the wrong type
(typed as the config is, `minr.config.from_dict`) and, through `check`, values out of range: a bad value is one
line naming the key, the value and what is allowed, before any tensor is built (`minrctl pretrain --dry-run`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from minr.config import from_dict
from minr.errors import MinrError

_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True, kw_only=True)
class ModelArgs:
    """Base of the families' argument dataclasses: field types are checked here, ranges in `check`."""

    def __post_init__(self) -> None:
        for name, tp in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            ok = isinstance(value, int | float) if tp is float else isinstance(value, tp)
            if not ok or (tp is not bool and isinstance(value, bool)):
                raise MinrError(f"model_args.{name} must be {_TYPES.get(tp, tp)}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Ranges and relations between fields; subclasses extend it (calling super)."""

    @classmethod
    def names(cls) -> list[str]:
        return sorted(f.name for f in dataclasses.fields(cls))

    def with_overrides(self, overrides: dict[str, Any], model: str) -> ModelArgs:
        """These arguments with `overrides` (user values, as parsed from YAML) in place, typed and checked."""
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise MinrError(
                f"model {model!r} does not accept these model_args: {', '.join(unknown)}; "
                f"valid names: {', '.join(self.names())}"
            )
        values = {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, **overrides}
        return from_dict(type(self), values, "model_args.")


# -- range checks: one line naming the key, the value and what it may be -------------------------------------------
def positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise MinrError(f"model_args.{name} must be a positive integer, got {value!r}")


def channels(in_chans: int) -> None:
    if in_chans not in (1, 3):  # what the data loader gives (minr.data converts every image to one of them)
        raise MinrError(f"model_args.in_chans must be 1 (grayscale) or 3 (RGB), got {in_chans!r}")


def fraction(**values: float) -> None:
    """Dropout-like rates: in [0, 1)."""
    for name, value in values.items():
        if not (math.isfinite(value) and 0 <= value < 1):
            raise MinrError(f"model_args.{name} must be in [0, 1), got {value!r}")


def positive_number(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise MinrError(f"model_args.{name} must be a positive finite number, got {value!r}")


def one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise MinrError(f"model_args.{name} must be one of {', '.join(choices)}, got {value!r}")


def heads_divide(width_name: str, width: int, heads_name: str, heads: int) -> None:
    if width % heads:
        raise MinrError(
            f"model_args.{width_name}={width} must be a multiple of {heads_name}={heads} (each head gets "
            f"{width_name} / {heads_name} channels)"
        )


def mlp_width(embed_dim: int, mlp_ratio: float) -> None:
    positive_number(mlp_ratio=mlp_ratio)
    if int(embed_dim * mlp_ratio) < 1:  # timm's Mlp: int(dim * ratio) hidden units
        raise MinrError(f"model_args.mlp_ratio={mlp_ratio} gives MLPs of {int(embed_dim * mlp_ratio)} hidden units")
