"""What a probe knows about a feature source before building any model, and the raw-pixel floor.

`encoder_ref` reads a checkpoint's header alone (model, config, the weights' SHA-256 stored at save time) and
builds the model on the meta device for its shapes: enough to name, key and check every feature. The model
itself is loaded only when a feature has to be computed. The feature-kind table is the model class's own
(`Encoder.FEATURE_KINDS`); the raw pixels have one kind, "pixels".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from minr import masking
from minr.build import encoder_skeleton
from minr.checkpoint import stored_weights_sha256
from minr.errors import MinrError
from minr.models import MODEL_CLASSES, FeatureKind

PIXELS = "pixels"
PIXEL_KINDS = (FeatureKind(PIXELS, "the image's pixels, flattened (the floor every encoder should beat)"),)


@dataclass(frozen=True)
class EncoderRef:
    """A feature source by its identity: a checkpoint (or the raw pixels) and what keys its features."""

    path: str
    family: str  # "minr", "mae" or "pixels"
    model: str
    weights_sha256: str
    image_size: int
    in_chans: int
    depth: int
    mask_patch: int
    seed: int
    kinds: tuple[FeatureKind, ...]

    @property
    def kind_names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    @property
    def default_kind(self) -> str:
        return self.kinds[0].name

    def check(self, kinds: list[str], layer: int) -> int:
        """Validate kinds and block; return the block index (0 for pixels)."""
        for kind in kinds:
            if kind not in self.kind_names:
                choose = ", ".join(self.kind_names)
                raise MinrError(f"feature kind {kind!r} does not exist for {self.family} encoders; choose {choose}")
        if self.family == PIXELS:
            return 0
        if not -self.depth <= layer < self.depth:
            span = f"{-self.depth}..{self.depth - 1}"
            raise MinrError(f"--layer {layer} does not exist: {self.model} has {self.depth} blocks (use {span})")
        index = layer % self.depth
        last_only = [k.name for k in self.kinds if k.name in kinds and not k.any_block]
        if last_only and index != self.depth - 1:
            raise MinrError(f"feature kind {last_only[0]!r} comes from the last block only; drop --layer")
        return index


def encoder_ref(
    path: str, *, image_size: int = 28, in_chans: int = 1, mask_patch: int = 4, seed: int = 0
) -> EncoderRef:
    """The identity of a checkpoint's encoder, from its header (or of the raw pixels at the given size)."""
    if path == PIXELS:
        return EncoderRef(PIXELS, PIXELS, PIXELS, PIXELS, image_size, in_chans, 0, mask_patch, seed, PIXEL_KINDS)
    skeleton, meta = encoder_skeleton(path)
    cfg = meta["config"]
    return EncoderRef(
        path=str(path),
        family=skeleton.family,
        model=meta["model"],
        weights_sha256=stored_weights_sha256(path),
        image_size=skeleton.image_size,
        in_chans=skeleton.in_chans,
        depth=len(skeleton.blocks),
        mask_patch=cfg["mask"]["patch"],
        seed=cfg["train"]["seed"],
        kinds=MODEL_CLASSES[skeleton.family].FEATURE_KINDS,
    )


class PixelFeatures:
    """The raw-pixel floor behind the same `features` call as an encoder: the (masked) image, flattened."""

    def __init__(self, ref: EncoderRef) -> None:
        self.ref = ref

    def features(
        self, x: torch.Tensor, kinds, *, layer: int = -1, mask=None, mask_patch=None
    ) -> dict[str, torch.Tensor]:
        if mask is not None:
            x = masking.zero_fill(x, masking.to_pixels(mask, mask_patch or self.ref.mask_patch, x.shape[-1]))
        return {PIXELS: x.flatten(1)}


def known_kinds() -> set[str]:
    """Every feature kind of every model class, and the pixels."""
    return {n for cls in MODEL_CLASSES.values() for n in cls.kind_names()} | {PIXELS}


def kinds_help() -> str:
    """The feature kinds of every model class, for `--kind` help texts (from the classes' own tables)."""
    parts = [f"{fam.upper()}: {', '.join(cls.kind_names())}" for fam, cls in MODEL_CLASSES.items()]
    return "Feature kind (" + "; ".join(parts) + "; `pixels` for the raw-pixel floor)."
