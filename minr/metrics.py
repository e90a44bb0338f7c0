"""Reconstruction metrics. PSNR is per image on [0, 1] (the reconstruction clamped to it), then averaged."""

from __future__ import annotations

import torch

PROTOCOLS = ("full", "pasted", "masked")


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))


def psnr_protocols(recon: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (B,) under the three protocols of docs/METHOD.md#psnr-protocols.

    full: the raw reconstruction over every pixel; pasted: visible pixels taken from the input, masked pixels
    from the reconstruction; masked: the masked region only (MAE's loss region). pixel_mask (B, 1, H, W), True =
    masked, broadcast over channels.
    """
    recon, target = recon.float().clamp(0, 1), target.float()
    err = (recon - target) ** 2  # (B, C, H, W)
    m = pixel_mask.expand_as(err).float()
    full = err.flatten(1).mean(1)
    pasted = (err * m).flatten(1).mean(1)
    masked = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1)
    return {"full": psnr_from_mse(full), "pasted": psnr_from_mse(pasted), "masked": psnr_from_mse(masked)}
