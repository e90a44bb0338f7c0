"""Typed results read back from JSON: a dataclass rebuilt from the plain data `dataclasses.asdict` wrote, field by
field from its type hints (nested dataclasses, lists, tuples, dicts, optional and union fields). A file that does
not match its type is refused with the field that failed, never half-read into dicts."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from minr.errors import MinrError


class _Mismatch(Exception):
    pass


def _build(tp: Any, value: Any, where: str) -> Any:
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _build(arg, value, where)
            except _Mismatch:
                continue
        raise _Mismatch(f"{where}: {value!r:.60} is none of {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = set(value) - fields
        if unknown:
            raise _Mismatch(f"{where}: {tp.__name__} has no field {sorted(unknown)[0]!r}")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise _Mismatch(f"{where}: expected a list, got {type(value).__name__}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise _Mismatch(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        out = [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(f"{where}: expected an object, got {type(value).__name__}")
        item = args[1] if len(args) == 2 else Any
        return {k: _build(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise _Mismatch(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r:.60}")


def from_plain(cls: type, data: Any, what: str) -> Any:
    """`cls` rebuilt from `data` (what `dataclasses.asdict` wrote); `what` names the file in the error."""
    try:
        return _build(cls, data, cls.__name__)
    except _Mismatch as e:
        raise MinrError(
            f"{what} does not hold {cls.__name__} results ({e}); delete it and run that stage again"
        ) from None
