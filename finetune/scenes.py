"""A real segmentation task that runs on a CPU: Fashion-MNIST garments placed on a canvas (shared DATA.md).

Each pixel's label is its garment's class + 1 where the garment's intensity is above a threshold, 0 (background)
elsewhere; later garments cover earlier ones. Written in mmseg's `img_dir/{train,val}` + `ann_dir/{train,val}`
layout, it goes through the same code path as ADE20K. Train scenes use Fashion-MNIST's train images, val scenes
its test images. Deterministic under a seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from minr.config import DataConfig
from minr.data import FASHION_CLASSES, dataset_sources
from minr.errors import MinrError

CLASSES = ("background", *FASHION_CLASSES)


def make_scene(
    garments: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator, threshold: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Place the garments (K, 28, 28) at random positions; returns (image (size, size) uint8, labels)."""
    image = np.zeros((size, size), np.uint8)
    target = np.zeros((size, size), np.uint8)
    for g, y in zip(garments, labels, strict=True):
        top, left = rng.integers(0, size - 28 + 1, size=2)
        on = g > threshold
        image[top : top + 28, left : left + 28][on] = g[on]
        target[top : top + 28, left : left + 28][on] = y + 1
    return image, target


def make_fashion_scenes(
    out: str | Path,
    *,
    n_train: int = 2000,
    n_val: int = 400,
    size: int = 56,
    seed: int = 0,
    data_root: str | None = None,
) -> Path:
    if size < 28:
        raise MinrError(f"--size must be at least 28 (a garment), got {size}")
    out = Path(out)
    sources = dataset_sources(DataConfig(root=data_root))
    rng = np.random.default_rng(seed)
    for split, n, src in (("train", n_train, sources["train"]), ("val", n_val, sources["test"])):
        (out / "img_dir" / split).mkdir(parents=True, exist_ok=True)
        (out / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pick = rng.choice(len(src), size=rng.integers(2, 5), replace=False)
            image, target = make_scene(src.arrays[pick], src.labels[pick], size, rng)
            Image.fromarray(image).save(out / "img_dir" / split / f"{i:05d}.png")
            Image.fromarray(target).save(out / "ann_dir" / split / f"{i:05d}.png")
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "seed": seed, "size": size}))
    return out
