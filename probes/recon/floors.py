"""Reconstructions that learn nothing, judged with the same masks and protocols as the models: the training set's
mean image, the nearest visible pixel, and OpenCV's Telea inpainting (an interpolating inpainter; OpenCV comes with
mmcv). A model's margin over the best floor is the number that says it learned something.

Keys: N images, C channels, H/W size. Images are float in [0, 1]; masks (N, 1, H, W) bool, True = masked.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

FLOORS = ("mean_image", "nearest_visible", "inpaint_telea")


def mean_image(train_mean: torch.Tensor, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The training set's mean image (C, H, W) for every image: it ignores the input entirely."""
    return train_mean.expand_as(images).clone()


def nearest_visible(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each masked pixel takes the value of its nearest visible pixel (Euclidean, ties by scan order)."""
    out = images.clone()
    for i in range(len(images)):
        m = mask[i, 0].numpy()
        if not m.any() or m.all():
            continue
        _, (ys, xs) = distance_transform_edt(m, return_indices=True)
        out[i] = images[i][:, torch.from_numpy(ys), torch.from_numpy(xs)]
    return out


def inpaint_telea(images: torch.Tensor, mask: torch.Tensor, radius: int = 3) -> torch.Tensor | None:
    """OpenCV's Telea inpainting of the masked pixels, channel by channel; None when OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    out = images.clone()
    for i in range(len(images)):
        m = mask[i, 0].numpy().astype(np.uint8)
        if not m.any() or m.all():
            continue
        for c in range(images.shape[1]):
            u8 = np.clip(np.round(images[i, c].numpy() * 255), 0, 255).astype(np.uint8)
            filled = cv2.inpaint(u8, m, radius, cv2.INPAINT_TELEA)
            out[i, c] = torch.where(mask[i, 0], torch.from_numpy(filled).float() / 255, images[i, c])
    return out


def floor_reconstruction(name: str, images: torch.Tensor, mask: torch.Tensor, train_mean: torch.Tensor):
    """The floor `name`'s reconstruction of the masked images, or None when its library is missing."""
    if name == "mean_image":
        return mean_image(train_mean, images, mask)
    if name == "nearest_visible":
        return nearest_visible(images, mask)
    return inpaint_telea(images, mask)
