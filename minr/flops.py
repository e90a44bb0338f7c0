"""Training FLOPs, counted rather than estimated, and step budgets matched by them.

A model's cost is one forward + backward of its own pretraining loss under `torch.utils.flop_counter`, per image:
the count follows from shapes alone, so a budget matched by it holds on every machine (timings do not). The
counter sees matrix products, convolutions and attention, the work that grows with the model; elementwise ops
are left out for every model alike. MAE's encoder sees only the visible tokens and MINR renders every pixel (or
`train.render_fraction` of them), so the count uses the run's own mask and render settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from minr.build import build_model, default_config
from minr.config import MaskConfig, PretrainConfig
from minr.errors import MinrError
from minr.masking import make_masks

CPU = torch.device("cpu")


def random_batch(model, batch: int, device: torch.device, patch: int, mask: MaskConfig | None = None):
    """(images, masks, patch): uniform random images of the model's shape and masks (75% random by default)."""
    size, chans = model.image_size, model.in_chans
    x = torch.rand(batch, chans, size, size, device=device)
    mask = mask or MaskConfig(ratio=0.75, patch=patch)
    masks = make_masks(range(batch), mask, size, seed=0, salt="speed").to(device)
    return x, masks, patch


def pixel_index(model, device: torch.device, render_fraction: float) -> dict[str, torch.Tensor]:
    """The forward's extra argument for rendering a random fraction of the pixels (MINR's fast option); the count
    of pixels is the training loop's (`minr.train.pixel_subset`)."""
    if render_fraction >= 1:
        return {}
    n = model.image_size**2
    g = torch.Generator().manual_seed(0)
    return {"pixel_index": torch.randperm(n, generator=g)[: max(1, int(n * render_fraction))].to(device)}


def flops_per_image(
    model, patch: int, device: torch.device, render_fraction: float = 1.0, mask: MaskConfig | None = None
) -> float:
    """Counted FLOPs of one training forward + backward at batch 2, per image."""
    x, masks, patch = random_batch(model, 2, device, patch, mask)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, masks, patch, **pixel_index(model, device, render_fraction)).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


_COUNTED: dict[tuple[str, str], float] = {}  # (config, device type) -> FLOPs: each configuration is counted once


def train_flops_per_image(cfg: PretrainConfig, device: torch.device = CPU) -> float:
    """FLOPs per training image of a pretraining config: its model, mask and render fraction."""
    key = (repr(cfg), device.type)
    if key not in _COUNTED:
        model = build_model(cfg).to(device).train()
        _COUNTED[key] = flops_per_image(model, cfg.mask.patch, device, cfg.train.render_fraction, cfg.mask)
    return _COUNTED[key]


@dataclass(frozen=True)
class ComputeBudget:
    """A pretraining budget: `steps` of `batch_size` images at `flops_per_image`; `matched_to` names the model
    whose total FLOPs these steps match (None: the budget was given in steps)."""

    model: str
    flops_per_image: float
    batch_size: int
    steps: int
    matched_to: str | None = None

    @property
    def flops(self) -> float:
        return self.flops_per_image * self.batch_size * self.steps


def step_budget(cfg: PretrainConfig, steps: int, device: torch.device = CPU) -> ComputeBudget:
    if steps < 1:
        raise MinrError(f"a pretraining budget of {steps} steps: give at least 1 (pretrain.steps)")
    return ComputeBudget(cfg.model, train_flops_per_image(cfg, device), cfg.train.batch_size, steps)


def match_budget(budget: ComputeBudget, cfg: PretrainConfig, device: torch.device = CPU) -> ComputeBudget:
    """The steps of `cfg` whose training FLOPs are closest to `budget`'s (at least one): more steps for a cheaper
    model, fewer for a dearer one, off by at most half a step of `cfg`."""
    per_image = train_flops_per_image(cfg, device)
    steps = max(1, round(budget.flops / (per_image * cfg.train.batch_size)))
    return ComputeBudget(cfg.model, per_image, cfg.train.batch_size, steps, matched_to=budget.model)


def equal_compute(
    reference: str,
    other: str,
    *,
    steps: int,
    batch_size: int,
    image_size: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: torch.device = CPU,
) -> tuple[ComputeBudget, ComputeBudget]:
    """`reference` trained for `steps`, and `other` for the steps of the same training FLOPs; both presets at
    `batch_size` (and `image_size` if given), with the dotted `overrides` every model of a comparison shares."""
    shared = {**(overrides or {}), "train.batch_size": batch_size}
    if image_size is not None:
        shared["model_args.image_size"] = image_size
    ref_cfg, other_cfg = default_config(reference, shared), default_config(other, shared)  # both checked first
    ref = step_budget(ref_cfg, steps, device)
    return ref, match_budget(ref, other_cfg, device)
