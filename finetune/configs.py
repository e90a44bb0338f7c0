"""The settings of fine-tuning and segmentation runs: plain dataclasses that validate themselves, importable without
mmsegmentation (the CLI reads their fields and defaults to declare and check its options)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from minr.config import DataConfig
from minr.errors import MinrError

# Segmentation backbone features: an encoder's token maps, MINR's per-pixel INR activations, both side by side,
# or the image itself through the same head with no encoder at all (the floor an encoder must beat).
FEATURES = ("tokens", "inr", "inr+tokens", "pixels")
DENSE_FEATURES = ("inr", "inr+tokens")  # the ones that need an encoder with per-pixel features (MINR)
INR_FIT_STEPS = 30  # test-time fitting steps of per-pixel INR features by default (see HyperINR.fit_weights)


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class TrainingSettings:
    """What fine-tuning and segmentation share: the checkpoints, AdamW with layer decay, warm-up, seeds, device."""

    ckpts: tuple[str, ...]
    names: tuple[str, ...] = ()  # display names of the checkpoints (default: their model names)
    groups: tuple[str, ...] = ()  # one per checkpoint: MINR and MAE are paired only within a group (default: one)
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_fraction: float = 0.1
    drop_path: float = 0.1
    seeds: int = 1
    device: str = "auto"
    compile: bool = False  # torch.compile the model being trained

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise MinrError("give at least one --ckpt")
        for what in ("names", "groups"):
            if getattr(self, what) and len(getattr(self, what)) != len(self.ckpts):
                raise MinrError(f"{len(getattr(self, what))} {what} for {len(self.ckpts)} checkpoints")
        if len(set(self.names)) != len(self.names):
            raise MinrError("two checkpoints have the same name")
        for name in ("batch_size", "seeds", *(("max_steps",) if self.max_steps is not None else ())):
            if getattr(self, name) < 1:
                raise MinrError(f"{_option(name)} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.layer_decay <= 1:
            raise MinrError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MinrError(f"--lr must be a positive finite number, got {self.lr}")
        self._at_least_zero("weight_decay")
        self._fractions("drop_path", "warmup_fraction")

    def _at_least_zero(self, *names: str) -> None:
        for name in names:
            if not 0 <= getattr(self, name) < float("inf"):
                raise MinrError(f"{_option(name)} must be >= 0, got {getattr(self, name)}")

    def _fractions(self, *names: str) -> None:
        for name in names:
            if not 0 <= getattr(self, name) < 1:
                raise MinrError(f"{_option(name)} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class FinetuneConfig(TrainingSettings):
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 3
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    trainable_blocks: int | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise MinrError(f"--epochs must be >= 1, got {self.epochs}")
        self._at_least_zero("mixup", "cutmix")
        self._fractions("label_smoothing")


@dataclass(frozen=True)
class SegConfig(TrainingSettings):
    dataset: str = ""
    max_steps: int | None = 200
    regime: str = "full"
    backbones: tuple[str, ...] = ("tokens",)
    head_channels: int = 64
    crop: int | None = None
    max_images: int | None = None
    inr_layers: tuple[int, ...] | None = None  # INR hidden layers of the per-pixel features; None: the encoder's own
    inr_fit_steps: int = INR_FIT_STEPS  # test-time fitting of each window's INR before its activations are read

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.dataset:
            raise MinrError("--task segmentation needs --dataset fashion-scenes:PATH, ade20k:PATH or seg:PATH")
        if self.max_steps is None:
            raise MinrError("--max-steps must be >= 1, got None")
        if self.regime not in ("full", "frozen"):
            raise MinrError(f"--regime must be full or frozen, got {self.regime!r}")
        bad = [b for b in self.backbones if b not in FEATURES]
        if bad or not self.backbones:
            raise MinrError(f"--backbone must be one of {', '.join(FEATURES)}, got {bad[0] if bad else 'nothing'!r}")
        if self.inr_layers is not None and not self.inr_layers:
            raise MinrError("--inr-layers: give at least one INR layer, e.g. 1 or 1,3")
        if self.inr_layers is not None and not set(self.backbones) & set(DENSE_FEATURES):
            raise MinrError("--inr-layers applies to --backbone inr or inr+tokens; add one of them or leave it out")
        if self.inr_fit_steps < 0:
            raise MinrError(f"--inr-fit-steps must be >= 0, got {self.inr_fit_steps}")
        if self.crop is not None and self.crop < 1:
            raise MinrError(f"--crop must be >= 1, got {self.crop}")
