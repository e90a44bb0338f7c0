"""A real segmentation task that runs on a CPU: Fashion-MNIST garments placed on a canvas.

Each pixel's label is its garment's class + 1 where the garment's intensity is above a threshold, 0 (background)
elsewhere; later garments cover earlier ones. Written in mmseg's `img_dir/{train,val}` + `ann_dir/{train,val}`
layout, it goes through the same code path as ADE20K. Train scenes use Fashion-MNIST's train images, val scenes
its test images. Deterministic under a seed.

The set is written whole or not at all: into a temporary folder beside `out`, renamed into place at the end. An
`out` that already holds a set this command wrote is replaced as a whole (no stale scene survives beside a
`classes.json` that describes new ones); an `out` holding anything else is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from minr.config import DataConfig
from minr.data import FASHION_CLASSES, dataset_sources
from minr.errors import MinrError
from minr.io import writing

CLASSES = ("background", *FASHION_CLASSES)
GENERATOR = "minrctl data make-fashion-scenes"
MAX_SIZE = 4096
_SCENE = re.compile(r"\d{5,}\.png")


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
    if not 28 <= size <= MAX_SIZE:
        raise MinrError(f"--size must be at least 28 (a garment) and at most {MAX_SIZE}, got {size}")
    for name, n in (("--n-train", n_train), ("--n-val", n_val)):
        if n < 1:
            raise MinrError(f"{name} must be >= 1, got {n}")
    out = Path(out)
    _check_replaceable(out)
    sources = dataset_sources(DataConfig(root=data_root))
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    try:
        with writing(out):  # an unwritable parent, or a full disk, is one line that names it
            _write_scenes(tmp, sources, n_train=n_train, n_val=n_val, size=size, seed=seed)
            _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_scenes(folder: Path, sources, *, n_train: int, n_val: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n, src in (("train", n_train, sources["train"]), ("val", n_val, sources["test"])):
        (folder / "img_dir" / split).mkdir(parents=True, exist_ok=True)
        (folder / "ann_dir" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pick = rng.choice(len(src), size=rng.integers(2, 5), replace=False)
            image, target = make_scene(src.arrays[pick], src.labels[pick], size, rng)
            Image.fromarray(image).save(folder / "img_dir" / split / f"{i:05d}.png")
            Image.fromarray(target).save(folder / "ann_dir" / split / f"{i:05d}.png")
    meta = {"classes": CLASSES, "seed": seed, "size": size, "n_train": n_train, "n_val": n_val, "generator": GENERATOR}
    (folder / "classes.json").write_text(json.dumps(meta))


def _check_replaceable(out: Path) -> None:
    """`out` may be new, empty, or hold only what this command writes (a set, or the part of one that an older
    version left when stopped); anything else is refused before anything is written."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MinrError(f"--out {out} is a file; give a folder for the scenes")
    foreign = next((p for p in sorted(out.rglob("*")) if not _ours(out, p)), None)
    if foreign is not None:
        raise MinrError(
            f"--out {out} already holds {str(foreign.relative_to(out))!r}, which make-fashion-scenes did not write; "
            "choose a new or empty folder (nothing was changed)"
        )


def _ours(out: Path, p: Path) -> bool:
    """Whether `p` (inside `out`) is a file or folder of a scene set: classes.json of these classes,
    img_dir/ann_dir, their train/val folders, and 00000.png-style scenes in them."""
    parts = p.relative_to(out).parts
    if parts == ("classes.json",):
        try:
            meta = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        return isinstance(meta, dict) and list(meta.get("classes", [])) == list(CLASSES)
    if parts[0] not in ("img_dir", "ann_dir") or len(parts) > 3 or parts[1:2] not in ((), ("train",), ("val",)):
        return False
    if len(parts) < 3:
        return p.is_dir()
    return p.is_file() and _SCENE.fullmatch(parts[2]) is not None


def _replace(new: Path, out: Path) -> None:
    """Move the finished set into place; a previous set at `out` goes as a whole, after the new one is there."""
    if not out.exists():
        new.rename(out)
        return
    old = out.parent / f".{out.name}.old{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(old)
    if any(out.iterdir()):
        out.rename(old)
    else:
        out.rmdir()
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)
