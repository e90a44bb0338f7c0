"""What every pretraining model returns, and the encoder interface evaluators rely on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class PretrainOutput:
    """loss: scalar; recon: (B, C, H, W) full-resolution reconstruction, or None when only a subset of pixels
    was rendered; pixel_mask: (B, 1, H, W) bool, True = masked."""

    loss: torch.Tensor
    recon: torch.Tensor | None
    pixel_mask: torch.Tensor


class EncoderMixin:
    """The one feature interface (STYLE.md principle 8).

    `forward_features(x, mask=None) -> (B, L, D)` returns the final token sequence and
    `get_intermediate_layers(x, n, mask=None)` the outputs of the last `n` blocks (or of the block indices in
    `n`), each (B, L, D). `token_groups` names the slices of L (for example {"cls": slice(0, 1), "patch":
    slice(1, None)}), so evaluators pool without knowing the model family.
    """

    family: str
    embed_dim: int
    decoder_prefixes: tuple[str, ...] = ()  # parameters that only serve pretraining (decoders, INR heads)

    def is_encoder_parameter(self, name: str) -> bool:
        """Whether a parameter is part of the encoder that evaluators use (not of the pretraining decoder)."""
        return not name.startswith(self.decoder_prefixes)

    def layer_id(self, name: str) -> int:
        """For layer-wise learning-rate decay: 0 for embeddings and tokens, i + 1 for block i, depth + 1 after."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("norm.", "fc_norm.", "head.")):
            return len(self.blocks) + 1  # type: ignore[attr-defined]
        return 0

    def token_groups(self) -> dict[str, slice]:
        raise NotImplementedError

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
        """Outputs of the last `n` blocks (or of the listed block indices). `mask` (B, gh, gw) of
        `mask_patch`-pixel cells (default: the cells that tile the image) masks the input as in pretraining."""
        depth = len(self.blocks)  # type: ignore[attr-defined]
        indices = list(range(depth - n, depth)) if isinstance(n, int) else [i % depth for i in n]
        bad = [i for i in indices if not 0 <= i < depth]
        if bad:
            raise ValueError(f"block index out of range for a {depth}-block encoder: {bad}")
        if mask_patch is None and mask is not None:
            mask_patch = math.ceil(x.shape[-1] / mask.shape[-1])
        return self._block_outputs(x, mask, mask_patch or 0, set(indices))

    def forward_features(
        self, x: torch.Tensor, *, mask: torch.Tensor | None = None, mask_patch: int | None = None
    ) -> torch.Tensor:
        return self.get_intermediate_layers(x, 1, mask=mask, mask_patch=mask_patch)[0]
