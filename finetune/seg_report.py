"""A PNG of segmentation predictions: image, ground truth, then each model's prediction, one row per image."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from minr.checkpoint import atomic_write_bytes


def colorize(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(H, W) class indices -> (3, H, W) colours from a fixed palette; ignored pixels white."""
    rng = np.random.default_rng(0)
    palette = np.concatenate([[[0, 0, 0]], rng.integers(40, 255, size=(max(num_classes, 1), 3))]) / 255
    idx = np.where(labels == ignore_index, -1, labels)
    rgb = np.where(idx[..., None] < 0, 1.0, palette[np.clip(idx, 0, num_classes)])
    return torch.from_numpy(rgb).permute(2, 0, 1).float()


def save_prediction_grid(dataset, predictions: list[tuple[str, list[np.ndarray]]], path: Path, n: int = 6) -> None:
    n = min(n, len(dataset))
    num_classes = len(dataset.metainfo["classes"])
    tiles = []
    for i in range(n):
        item = dataset[i]
        img = item["inputs"].float() / 255
        img = img.expand(3, -1, -1) if img.shape[0] == 1 else img.flip(0)  # BGR -> RGB
        tiles += [img, colorize(item["data_samples"].gt_sem_seg.data[0].numpy(), num_classes)]
        tiles += [colorize(preds[i], num_classes) for _, preds in predictions]
    grid = make_grid(torch.stack(tiles), nrow=2 + len(predictions), padding=2, pad_value=1.0)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
