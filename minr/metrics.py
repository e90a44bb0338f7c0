"""Reconstruction metrics. PSNR is per image on [0, 1] (the reconstruction clamped to it), then averaged.

An image with no masked pixel (possible with Bernoulli masks at low ratios) has no masked region: its masked and
pasted PSNR are undefined, NaN, never the 100 dB of an error of zero. Averages leave such images out and say how
many they left out (`mean_defined`).
"""

from __future__ import annotations

import torch

PROTOCOLS = ("full", "pasted", "masked")


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-10))


def psnr_protocols(recon: torch.Tensor, target: torch.Tensor, pixel_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image PSNR (B,) under the three protocols of docs/METHOD.md#psnr-protocols.

    full: the raw reconstruction over every pixel; pasted: visible pixels taken from the input, masked pixels
    from the reconstruction; masked: the masked region only (MAE's loss region). pixel_mask (B, 1, H, W), True =
    masked, broadcast over channels. Pasted and masked are NaN for an image with no masked pixel.
    """
    recon, target = recon.float().clamp(0, 1), target.float()
    err = (recon - target) ** 2  # (B, C, H, W)
    m = pixel_mask.expand_as(err).float()
    count = m.flatten(1).sum(1)  # (B,) masked values
    undefined = torch.where(count > 0, 0.0, float("nan"))  # NaN where nothing is masked, else 0 (added)
    full = err.flatten(1).mean(1)
    pasted = (err * m).flatten(1).mean(1) + undefined
    masked = (err * m).flatten(1).sum(1) / count.clamp_min(1) + undefined
    return {"full": psnr_from_mse(full), "pasted": psnr_from_mse(pasted), "masked": psnr_from_mse(masked)}


def mean_defined(values: torch.Tensor) -> tuple[float, int]:
    """(mean over the finite values, how many values were not finite and left out); NaN when none is finite."""
    ok = torch.isfinite(values)
    n = int(ok.sum())
    return (values[ok].double().mean().item() if n else float("nan")), len(values) - n
