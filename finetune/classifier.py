"""An encoder behind the common interface with a pooled linear head, and partial fine-tuning."""

from __future__ import annotations

import torch
from torch import nn

from minr.build import register_encoder_prefix
from minr.errors import MinrError
from minr.models import Encoder
from minr.optim import encoder_layers, prefixed_matcher


def token_kinds(encoder: Encoder) -> tuple[str, ...]:
    """The feature kinds a classifier can pool and train through (plain token poolings of width D)."""
    return tuple(k.name for k in encoder.FEATURE_KINDS if k.token_pool)


class EncoderClassifier(nn.Module):
    """encoder.features -> pooled tokens (`kind`) -> LayerNorm -> BatchNorm -> Linear: (B, C, H, W) -> (B, classes)."""

    ENCODER_PREFIX = "encoder."  # where `self.encoder`'s tensors lie in this module's state dict

    def __init__(self, encoder: Encoder, num_classes: int, *, kind: str) -> None:
        super().__init__()
        if kind not in token_kinds(encoder):
            raise MinrError(
                f"fine-tuning pools tokens: --kind must be one of {', '.join(token_kinds(encoder))}"
                f" for {encoder.family} encoders, got {kind!r}"
            )
        self.encoder, self.kind = encoder, kind
        width = encoder.info().width
        # LayerNorm as MAE's fine-tuning head, then MAE linear probing's affine-free BatchNorm: pooled tokens vary
        # little between images, and standardising each dimension lets the head learn in few steps.
        self.fc_norm = nn.Sequential(nn.LayerNorm(width), nn.BatchNorm1d(width, affine=False, eps=1e-6))
        self.head = nn.Linear(width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head init
        nn.init.zeros_(self.head.bias)
        for name, p in encoder.named_parameters():  # the pretraining decoder takes no part
            if not encoder.is_encoder_parameter(name):
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.encoder.features(x, [self.kind])[self.kind]))

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        return prefixed_matcher(self.encoder.group_matcher(coarse), self.ENCODER_PREFIX)


register_encoder_prefix("finetune", EncoderClassifier.ENCODER_PREFIX)  # fine-tuning checkpoints hold this module


def freeze_all_but_last(model: EncoderClassifier, trainable_blocks: int | None) -> None:
    """Partial fine-tuning (MAE Fig. 9): only the last `n` blocks, the final norm and the head train."""
    if trainable_blocks is None:
        return
    enc, n = model.encoder, trainable_blocks
    depth = enc.info().depth
    if not 0 <= n <= depth:
        raise MinrError(f"--trainable-blocks must be in [0, {depth}], got {n}")
    layers = encoder_layers(enc)
    for name, p in enc.named_parameters():
        if enc.is_encoder_parameter(name):
            p.requires_grad_(n > 0 and layers[name] > depth - n)  # last n blocks + final norm
