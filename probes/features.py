"""Feature kinds: how a token sequence from the encoder interface becomes one vector per image.

Pooling uses `token_groups()` of the encoder interface; the MINR modulation uses the family's public
`modulations()`. Keys: B batch, L tokens, D width.
"""

from __future__ import annotations

import torch
from torch import nn

from minr.errors import MinrError

FEATURE_KINDS = {
    "minr": ("data_mean", "weight_mean", "modulation", "concat"),
    "mae": ("cls", "patch_mean", "concat"),
    "pixels": ("pixels",),
}
DEFAULT_KIND = {"minr": "data_mean", "mae": "cls", "pixels": "pixels"}


def check_kind(family: str, kind: str) -> None:
    if kind not in FEATURE_KINDS[family]:
        raise MinrError(
            f"feature kind {kind!r} does not exist for {family} encoders; choose {', '.join(FEATURE_KINDS[family])}"
        )


def pool(model: nn.Module, tokens: torch.Tensor, kind: str, *, last_block: bool) -> torch.Tensor:
    """(B, L, D) tokens of one block -> (B, F) features of `kind`."""
    groups = model.token_groups()
    if kind == "cls":
        return tokens[:, groups["cls"]].mean(1)
    if kind in ("data_mean", "weight_mean", "patch_mean"):
        return tokens[:, groups[kind.removesuffix("_mean")]].mean(1)
    if kind == "modulation":
        if not last_block:
            raise MinrError("feature kind 'modulation' is predicted from the last block only; drop --layer")
        return torch.cat([m.mean(1) for m in model.modulations(tokens)], dim=1)  # mean over each layer's tokens
    if kind == "concat":
        parts = ("data_mean", "weight_mean") + (("modulation",) if last_block else ())
        if model.family == "mae":
            parts = ("cls", "patch_mean")
        return torch.cat([pool(model, tokens, p, last_block=last_block) for p in parts], dim=1)
    raise MinrError(f"unknown feature kind {kind!r}")
