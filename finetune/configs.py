"""The settings of fine-tuning and segmentation runs: plain dataclasses that validate themselves, importable without
mmsegmentation (the CLI reads their fields and defaults to declare and check its options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minr.config import DataConfig
from minr.errors import MinrError

FEATURES = ("tokens", "inr")  # segmentation backbone features: token maps, or MINR's per-pixel INR activations


@dataclass(frozen=True)
class FinetuneConfig:
    ckpts: tuple[str, ...]
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_fraction: float = 0.1
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    trainable_blocks: int | None = None
    kind: str | None = None
    seeds: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise MinrError("give at least one --ckpt")
        for name in ("epochs", "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise MinrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise MinrError(f"--max-steps must be >= 1, got {self.max_steps}")
        if not 0 < self.layer_decay <= 1:
            raise MinrError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MinrError(f"--lr must be a positive finite number, got {self.lr}")
        for name in ("weight_decay", "mixup", "cutmix"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise MinrError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("drop_path", "label_smoothing", "warmup_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise MinrError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class SegConfig:
    ckpts: tuple[str, ...]
    dataset: str
    max_steps: int = 200
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_fraction: float = 0.1
    drop_path: float = 0.1
    regime: str = "full"
    backbones: tuple[str, ...] = ("tokens",)
    head_channels: int = 64
    crop: int | None = None
    seeds: int = 1
    max_images: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise MinrError("give at least one --ckpt")
        if self.regime not in ("full", "frozen"):
            raise MinrError(f"--regime must be full or frozen, got {self.regime!r}")
        if set(self.backbones) - set(FEATURES):
            raise MinrError(f"--backbone must be tokens or inr, got {self.backbones}")
        for name, value in (
            ("--max-steps", self.max_steps),
            ("--batch-size", self.batch_size),
            ("--seeds", self.seeds),
        ):
            if value < 1:
                raise MinrError(f"{name} must be >= 1, got {value}")
        if not 0 < self.layer_decay <= 1:
            raise MinrError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MinrError(f"--lr must be a positive finite number, got {self.lr}")
