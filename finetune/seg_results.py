"""Typed results of a segmentation run: one entry per model x feature (the raw-pixel floor among them), per-class
IoU, and paired per-image IoU comparisons (MINR - MAE, and every encoder - the pixel floor)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probes.stats import Paired

FLOOR_FAMILY = "pixels"


@dataclass(frozen=True)
class SegEntry:
    """One model x backbone feature trained for segmentation; IoU and accuracies are fractions in [0, 1].

    `per_class_IoU` is the mean over seeds; None for a class that no validation image holds and no model predicted
    (its IoU is undefined, and mmseg's mIoU leaves it out too). The raw-pixel floor has family "pixels", no ckpt.
    """

    name: str  # e.g. "ginr_tiny:tokens", "ginr_tiny:inr[1]", "mae_tiny:tokens", "pixels"
    ckpt: str | None
    model: str  # the registered model, or "pixels"
    family: str  # "minr", "mae" or "pixels"
    feature: str  # "tokens", "inr", "inr+tokens" or "pixels"
    inr_layers: list[int]  # the INR hidden layers of per-pixel features (empty for tokens and pixels)
    inr_fit_steps: int  # test-time fitting steps of each INR before its activations were read (0: as predicted)
    regime: str  # "frozen" or "full"
    mean: float  # mIoU over seeds
    std: float
    per_seed: list[float]
    mAcc: float
    aAcc: float
    per_class_IoU: dict[str, float | None]
    train_images_per_s: float | None
    first_loss: float | None  # of this session's steps: a resumed run that had finished has none
    last_loss: float | None

    @property
    def is_floor(self) -> bool:
        return self.family == FLOOR_FAMILY


@dataclass(frozen=True)
class SegResults:
    config: dict[str, Any]
    classes: list[str]
    entries: list[SegEntry]
    paired: list[Paired]  # MINR - MAE on per-image IoU, every MINR entry against every MAE entry
    evaluated_images: int  # validation images
    runtime_s: float
    git_sha: str
    hardware: dict[str, Any]
    dataset: str
    vs_floor: list[Paired] = field(default_factory=list)  # every encoder entry - the pixel floor, per-image IoU
    task: str = "segmentation"

    @property
    def floor(self) -> SegEntry | None:
        return next((e for e in self.entries if e.is_floor), None)
