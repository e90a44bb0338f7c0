"""Reconstruction grids: what a checkpoint makes of masked validation images."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from minr import masking
from minr.build import model_from_checkpoint
from minr.checkpoint import atomic_write_bytes
from minr.data import load_split
from minr.errors import MinrError


@torch.no_grad()
def reconstruction_grid(
    ckpt: str, out: Path, *, num_images: int = 8, scale: int = 1, split: str = "val", data_root: str | None = None
) -> torch.Tensor:
    """Rows of (input, masked input, reconstruction, pasted, ground truth), with the run's own val masks.

    With `scale` > 1 the INR renders natively at the larger size; the other columns are upsampled (nearest).
    """
    if scale < 1:
        raise MinrError(f"--scale must be >= 1, got {scale}")
    model, cfg, _ = model_from_checkpoint(ckpt)
    if scale > 1 and model.family != "minr":
        raise MinrError(
            f"--scale {scale}: {cfg.model} predicts patches on a fixed grid; only MINR models render "
            f"at any resolution (use --scale 1)"
        )
    data_cfg = dataclasses.replace(cfg.data, root=data_root) if data_root else cfg.data
    data = load_split(data_cfg, split, image_size=model.image_size, in_chans=model.in_chans)
    n = min(num_images, len(data))
    images = torch.stack([data[i][0] for i in range(n)])
    mask = masking.make_masks(range(n), cfg.mask, model.image_size, seed=cfg.train.seed, salt=split)
    size = model.image_size * scale
    recon = model.reconstruct(images, mask, cfg.mask.patch, size=size).clamp(0, 1)
    pixel_mask = masking.to_pixels(mask, cfg.mask.patch, model.image_size)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), size=(size, size), mode="nearest") if scale > 1 else x.float()

    masked = masking.zero_fill(images, pixel_mask)
    pm = up(pixel_mask).bool()
    pasted = torch.where(pm, recon, up(images))
    rows = torch.stack([up(images), up(masked), recon, pasted, up(images)], dim=1).flatten(0, 1)
    grid = make_grid(rows, nrow=5, padding=2, pad_value=1.0)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return grid
