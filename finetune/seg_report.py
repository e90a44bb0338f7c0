"""A PNG of segmentation predictions with column titles: image, ground truth, then each model's prediction."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from minr.io import atomic_write_bytes


def palette(num_classes: int) -> np.ndarray:
    """A fixed colour per class (background black), (num_classes, 3) in [0, 1]."""
    rng = np.random.default_rng(0)
    return np.concatenate([[[0, 0, 0]], rng.integers(40, 255, size=(max(num_classes - 1, 1), 3))])[:num_classes] / 255


def colorize(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) colours from the fixed palette; ignored pixels white."""
    colours = palette(num_classes)
    out = colours[np.clip(labels, 0, num_classes - 1)]
    out[labels == ignore_index] = 1.0
    return out


def save_prediction_grid(dataset, predictions: list[tuple[str, list[np.ndarray]]], path: Path, n: int = 6) -> None:
    """One row per validation image; columns titled "image", "ground truth" and each model's name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(dataset))
    classes = dataset.metainfo["classes"]
    cols = ["image", "ground truth", *(name for name, _ in predictions)]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n + 0.4), squeeze=False)
    for i in range(n):
        item = dataset[i]
        img = item["inputs"].float().numpy() / 255
        img = np.repeat(img, 3, 0) if img.shape[0] == 1 else img[::-1]  # gray -> RGB, BGR -> RGB
        tiles = [img.transpose(1, 2, 0), colorize(item["data_samples"].gt_sem_seg.data[0].numpy(), len(classes))]
        tiles += [colorize(preds[i], len(classes)) for _, preds in predictions]
        for j, tile in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
