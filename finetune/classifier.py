"""An encoder from the common interface with a pooled linear head, and MAE's fine-tuning optimiser pieces."""

from __future__ import annotations

import torch
from torch import nn

from minr.errors import MinrError
from probes.features import pool

TOKEN_KINDS = {"minr": ("data_mean", "weight_mean"), "mae": ("patch_mean", "cls")}  # first: the default


class EncoderClassifier(nn.Module):
    """forward_features -> pooled tokens (`kind`) -> LayerNorm -> BatchNorm -> Linear: (B, C, H, W) -> (B, classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, kind: str) -> None:
        super().__init__()
        if kind not in TOKEN_KINDS[encoder.family]:
            raise MinrError(
                f"fine-tuning pools tokens: --kind must be one of {', '.join(TOKEN_KINDS[encoder.family])}"
                f" for {encoder.family} encoders, got {kind!r}"
            )
        self.encoder, self.kind = encoder, kind
        # LayerNorm as MAE's fine-tuning head, then MAE linear probing's affine-free BatchNorm: pooled tokens vary
        # little between images, and standardising each dimension lets the head learn in few steps.
        self.fc_norm = nn.Sequential(
            nn.LayerNorm(encoder.embed_dim), nn.BatchNorm1d(encoder.embed_dim, affine=False, eps=1e-6)
        )
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head init
        nn.init.zeros_(self.head.bias)
        for name, p in encoder.named_parameters():  # the pretraining decoder takes no part
            if not encoder.is_encoder_parameter(name):
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.forward_features(x)  # (B, L, D)
        return self.head(self.fc_norm(pool(self.encoder, tokens, self.kind, last_block=True)))


def freeze_all_but_last(model: EncoderClassifier, trainable_blocks: int | None) -> None:
    """Partial fine-tuning (MAE Fig. 9): only the last `n` blocks, the final norm and the head train."""
    if trainable_blocks is None:
        return
    enc, n = model.encoder, trainable_blocks
    if not 0 <= n <= len(enc.blocks):
        raise MinrError(f"--trainable-blocks must be in [0, {len(enc.blocks)}], got {n}")
    for name, p in enc.named_parameters():
        if enc.is_encoder_parameter(name):
            p.requires_grad_(n > 0 and enc.layer_id(name) > len(enc.blocks) - n)  # last n blocks + final norm


def layer_decay_groups(model: EncoderClassifier, *, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups with lr x layer_decay^(depth + 1 - layer) and no decay on biases, norms, tokens."""
    depth = len(model.encoder.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = model.encoder.layer_id(name.removeprefix("encoder.")) if name.startswith("encoder.") else depth + 1
        decay = p.ndim >= 2 and "token" not in name and "pos_embed" not in name
        g = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer),
            },
        )
        g["params"].append(p)
    for g in groups.values():
        g["lr"] = lr * g["lr_scale"]
    return list(groups.values())
