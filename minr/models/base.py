"""What every pretraining model returns, and the encoder interface that every evaluator uses (and only it).

The interface, in one place (`Encoder`; MINR's `HyperINR` (`TransINR`, `GINR`) and `MAE` implement it):
- `FEATURE_KINDS`: the table of per-image vectors the model offers (`FeatureKind`: name, meaning, whether any
  block gives it, whether it is a plain token pooling that fine-tuning can train through). Its first entry is the
  probes' default; `FINETUNE_KIND` is what fine-tuning pools by default.
- `features(x, kinds, layer=-1, mask=None)` -> {kind: (B, F)}: every requested kind from one forward pass.
- `forward_features(x)` -> (B, L, D) and `get_intermediate_layers(x, n)`: token sequences (dinov2, timm).
- `forward_intermediates(x, indices)` -> [(B, D, h, w)]: the spatial tokens of blocks as NCHW maps for dense
  heads (timm's `output_fmt="NCHW"`), on the grid `token_grid(H, W)`.
- `dense_features(x, levels, fit_steps)` -> [(B, C, H, W)]: per-pixel features at full resolution where the model has
  them (`info().dense_levels > 0`).
- `info()`: the metadata a head needs (`EncoderInfo`: width, depth, size divisor, dense width and levels).
- `group_matcher()` / `no_weight_decay()`: timm's hooks, so `timm.optim.param_groups_layer_decay` builds the
  layer-wise learning-rate decay groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from minr.errors import MinrError
from minr.models.args import ModelArgs


@dataclass
class PretrainOutput:
    """loss: scalar; recon: (B, C, H, W) full-resolution reconstruction, or None when only a subset of pixels
    was rendered; pixel_mask: (B, 1, H, W) bool, True = masked."""

    loss: torch.Tensor
    recon: torch.Tensor | None
    pixel_mask: torch.Tensor


@dataclass(frozen=True)
class FeatureKind:
    """One per-image vector an encoder offers."""

    name: str
    help: str
    any_block: bool = True  # False: only the last block gives it
    token_pool: bool = True  # a pooling of one block's tokens (width D), which fine-tuning can train through


@dataclass(frozen=True)
class EncoderInfo:
    """What a dense head needs to know about an encoder."""

    family: str
    image_size: int
    in_chans: int
    width: int  # D, the channels of `forward_intermediates`
    depth: int  # blocks
    size_divisor: int  # inputs must be padded to a multiple of this
    dense_width: int = 0  # channels of `dense_features` (0: the model has none)
    dense_levels: int = 0
    dense_specific: tuple[int, ...] = ()  # the levels whose activations depend on the image (not only on position)
    dense_default: tuple[int, ...] = ()  # the levels a dense head uses unless told otherwise


class Encoder(nn.Module):
    """The encoder interface (see the module docstring). Subclasses provide `_block_outputs`, `pool`,
    `_spatial_tokens`, `token_grid` and `_head_info`."""

    family: ClassVar[str]
    FEATURE_KINDS: ClassVar[tuple[FeatureKind, ...]]
    FINETUNE_KIND: ClassVar[str]
    STEM: ClassVar[str]  # regex of the parameters before the first block (layer 0 of layer decay)
    decoder_prefixes: ClassVar[tuple[str, ...]] = ()  # parameters that only serve pretraining
    Args: ClassVar[type[ModelArgs]]  # the constructor's one argument: the family's declared arguments
    renders_coordinates: ClassVar[bool] = False  # whether train.render_fraction and train.coord_noise act on it
    blocks: nn.ModuleList
    embed_dim: int
    image_size: int
    in_chans: int

    @classmethod
    def mask_patch_for(cls, args: ModelArgs) -> int | None:
        """The mask patch that pretraining with these arguments needs (MAE masks whole patches), or None: any."""
        return None

    # -- feature kinds ----------------------------------------------------------------------------------------
    @classmethod
    def kind_names(cls) -> tuple[str, ...]:
        return tuple(k.name for k in cls.FEATURE_KINDS)

    @classmethod
    def feature_kind(cls, name: str) -> FeatureKind:
        for k in cls.FEATURE_KINDS:
            if k.name == name:
                return k
        raise MinrError(
            f"feature kind {name!r} does not exist for {cls.family} encoders; choose {', '.join(cls.kind_names())}"
        )

    def block_index(self, layer: int) -> int:
        """A block index (negative counts from the end) checked against this encoder's depth."""
        depth = len(self.blocks)
        if not -depth <= layer < depth:
            raise MinrError(
                f"--layer {layer} does not exist: this encoder has {depth} blocks (use {-depth}..{depth - 1})"
            )
        return layer % depth

    def features(
        self,
        x: torch.Tensor,
        kinds: list[str] | tuple[str, ...],
        *,
        layer: int = -1,
        mask: torch.Tensor | None = None,
        mask_patch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every kind in `kinds` from one forward pass: {kind: (B, F)}. `mask` (B, gh, gw) masks the input as in
        pretraining (cells of `mask_patch` pixels)."""
        index = self.block_index(layer)
        last = index == len(self.blocks) - 1
        for kind in kinds:
            if not self.feature_kind(kind).any_block and not last:
                raise MinrError(f"feature kind {kind!r} comes from the last block only; drop --layer")
        tokens = self.get_intermediate_layers(x, [index], mask=mask, mask_patch=mask_patch)[0]
        return {kind: self.pool(tokens, kind, last_block=last) for kind in kinds}

    def pool(self, tokens: torch.Tensor, kind: str, *, last_block: bool) -> torch.Tensor:
        """(B, L, D) tokens of one block -> (B, F) features of `kind`."""
        raise NotImplementedError

    # -- token sequences --------------------------------------------------------------------------------------
    def _block_outputs(
        self, x: torch.Tensor, mask: torch.Tensor | None, mask_patch: int, keep: set[int]
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def get_intermediate_layers(
        self,
        x: torch.Tensor,
        n: int | list[int] = 1,
        *,
        mask: torch.Tensor | None = None,
        mask_patch: int | None = None,
    ) -> list[torch.Tensor]:
        """Outputs of the last `n` blocks (or of the listed block indices), each (B, L, D)."""
        depth = len(self.blocks)
        indices = list(range(depth - n, depth)) if isinstance(n, int) else [self.block_index(i) for i in n]
        if mask_patch is None and mask is not None:
            mask_patch = math.ceil(x.shape[-1] / mask.shape[-1])
        return self._block_outputs(x, mask, mask_patch or 0, set(indices))

    def forward_features(
        self, x: torch.Tensor, *, mask: torch.Tensor | None = None, mask_patch: int | None = None
    ) -> torch.Tensor:
        return self.get_intermediate_layers(x, 1, mask=mask, mask_patch=mask_patch)[0]

    # -- dense features ---------------------------------------------------------------------------------------
    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the spatial token grid for an input of this size."""
        raise NotImplementedError

    def _spatial_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, h*w, D): the tokens that sit on the image grid."""
        raise NotImplementedError

    def forward_intermediates(
        self, x: torch.Tensor, indices: list[int] | tuple[int, ...], *, output_fmt: str = "NCHW"
    ) -> list[torch.Tensor]:
        """The spatial tokens of the listed blocks as (B, D, h, w) maps (or (B, h*w, D) with output_fmt="NLC")."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        h, w = self.token_grid(*x.shape[-2:])
        maps = [self._spatial_tokens(t) for t in self.get_intermediate_layers(x, list(indices))]
        if output_fmt == "NLC":
            return maps
        return [t.transpose(1, 2).reshape(len(x), -1, h, w) for t in maps]

    def dense_features(self, x: torch.Tensor, levels: tuple[int, ...], fit_steps: int = 0) -> list[torch.Tensor]:
        """Per-pixel features (B, C, H, W) at full resolution, one map per level; `fit_steps`: test-time fitting
        of the model's per-image function to x first, where the model has one."""
        raise MinrError(f"{self.family} encoders have no per-pixel features; use the token features")

    def info(self) -> EncoderInfo:
        return EncoderInfo(
            family=self.family,
            image_size=self.image_size,
            in_chans=self.in_chans,
            width=self.embed_dim,
            depth=len(self.blocks),
            **self._head_info(),
        )

    def _head_info(self) -> dict[str, object]:
        """The model-specific part of `info`: size divisor, dense width and levels."""
        return {"size_divisor": 1}

    # -- optimisation hooks (timm's names) ---------------------------------------------------------------------
    def is_encoder_parameter(self, name: str) -> bool:
        """Whether a parameter is part of the encoder that evaluators use (not of the pretraining decoder)."""
        return not name.startswith(self.decoder_prefixes)

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Layer groups for layer-wise lr decay: the stem (0), block i (i + 1); anything else (final norm, heads,
        necks) falls into the top group."""
        return {"stem": self.STEM, "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None)]}

    def no_weight_decay(self) -> set[str]:
        """Parameters that get no weight decay besides biases and norms: learned tokens and position tables."""
        return {n for n, _ in self.named_parameters() if "token" in n or "pos_embed" in n}
