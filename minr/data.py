"""Datasets chosen by name, with explicit train / val / test splits.

Names: `fashion-mnist`, `digits`, `imagefolder:PATH`, `indoor67:PATH`, `celeba:PATH`. Every item is
`(image, label, index)`: a float (C, H, W) image in [0, 1] at the model's resolution and channel count, its label
(an int, or CelebA's 40 attributes), and its index in the split (which seeds its mask). Where a dataset has no
validation split, it is carved from train with a fixed seed (never the run's seed), so every run sees the same one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from minr import folders, sources
from minr.config import DataConfig
from minr.errors import MinrError
from minr.sources import FASHION_CLASSES, SPLIT_SEED, Source, open_image, read_idx, readable

__all__ = ["FASHION_CLASSES", "ImageDataset", "Source", "dataset_sources", "load_split", "read_idx"]

SPLITS = ("train", "val", "test")
DATASETS = "fashion-mnist, digits, photos (or photos:SIZE), imagefolder:PATH, indoor67:PATH or celeba:PATH"
FOLDERS = {"imagefolder": folders.load_imagefolder, "indoor67": folders.load_indoor67, "celeba": folders.load_celeba}


class ImageDataset(Dataset):
    """A split of a dataset, transformed to (C, H, W) float in [0, 1]. Items are (image, label, index)."""

    def __init__(self, source: Source, *, image_size: int, in_chans: int, name: str, split: str) -> None:
        self.source, self.image_size, self.in_chans = source, image_size, in_chans
        self.name, self.split = name, split
        self.classes = source.classes
        self.transform = T.Compose(
            [
                T.RGB() if in_chans == 3 else T.Grayscale(1),
                T.Resize(image_size, antialias=True),
                T.CenterCrop(image_size),
                T.ToImage(),
                T.ToDtype(torch.float32, scale=True),
            ]
        )

    def __len__(self) -> int:
        return len(self.source)

    @property
    def multilabel(self) -> bool:
        return self.source.labels.ndim == 2

    def _array_image(self, i: int) -> torch.Tensor:
        a = torch.from_numpy(self.source.arrays[i])
        img = (a[None] if a.ndim == 2 else a.permute(2, 0, 1)).float() / 255  # (C0, H0, W0)
        if img.shape[0] != self.in_chans:
            img = img.mean(0, keepdim=True) if self.in_chans == 1 else img.expand(self.in_chans, -1, -1)
        if img.shape[-1] != self.image_size or img.shape[-2] != self.image_size:
            img = F.interpolate(
                img[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )[0].clamp(0, 1)
        return img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        if self.source.arrays is not None:
            img = self._array_image(i)
        else:
            img = self.transform(open_image(self.source.files[i]))
        label = torch.as_tensor(self.source.labels[i])
        return img, label, i

    def fingerprint(self) -> str:
        """A hash of what this split holds and of its transform: pixels and labels of in-memory sets; of a folder
        set, its labels and each file's path, size and modification time (in ns). That is what make and ninja
        trust: replacing an image changes its mtime (and usually its size) without reading every file, which
        hashing the content would need on every run. A copy that keeps mtimes and sizes (`cp -p`, rsync)
        keeps the fingerprint, as it should."""
        h = hashlib.sha256(f"{self.name}|{self.split}|{self.image_size}|{self.in_chans}".encode())
        if self.source.files is not None:
            for f in self.source.files:
                try:
                    st = os.stat(f)
                    h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
                except OSError:  # reading it will say what is wrong; here it only has to differ
                    h.update(f"{f}\0missing\n".encode())
        else:
            h.update(self.source.arrays.tobytes())
        h.update(np.ascontiguousarray(self.source.labels).tobytes())
        return h.hexdigest()[:16]


# -- splits ---------------------------------------------------------------------------------------------------
def _carve(source: Source, fraction: float) -> tuple[Source, Source]:
    """Split off `fraction` of a source, stratified where the labels allow, with the fixed split seed."""
    idx = np.arange(len(source))
    strat = source.labels if source.labels.ndim == 1 and np.bincount(source.labels).min() >= 2 else None
    if len(idx) < 2:
        raise MinrError(f"cannot split {len(idx)} image(s) into train and val; add images")
    n_small = max(1, round(len(idx) * fraction))
    if strat is not None and n_small < len(np.unique(strat)):
        strat = None
    big, small = train_test_split(idx, test_size=n_small, random_state=SPLIT_SEED, stratify=strat)
    return source.subset(np.sort(big)), source.subset(np.sort(small))


def _cap(source: Source, n: int | None) -> Source:
    """At most `n` images, stratified by label where possible, always the same ones."""
    if n is None or n >= len(source):
        return source
    _, small = _carve(source, n / len(source))
    return small


def dataset_sources(cfg: DataConfig) -> dict[str, Source]:
    """All splits of a dataset ("train", "val", "test"), before any transform or cap."""
    return _sources(dataclasses.replace(cfg, max_images=None, skip_bad_images=False, workers=0))


@functools.lru_cache(maxsize=4)
def _sources(cfg: DataConfig) -> dict[str, Source]:
    """All splits of a dataset (cached: reading Fashion-MNIST's IDX files takes a second), each checked."""
    name = cfg.name
    kind, _, arg = name.partition(":")
    if kind == "fashion-mnist" and not arg:
        train, test = sources.load_fashion(cfg.root)
        raw = {"trainval": train, "test": test}
    elif kind == "digits" and not arg:
        raw = {"all": sources.load_digits()}
    elif kind == "photos":
        raw = sources.load_photos(_crop_size(arg))
    elif kind in FOLDERS and arg:
        raw = FOLDERS[kind](Path(arg).expanduser())
    else:
        raise MinrError(f"unknown dataset {name!r}; use {DATASETS}")
    for split, source in raw.items():
        source.check(f"{name} ({split})")
    if "all" in raw:
        rest, test = _carve(raw.pop("all"), 0.2)
        raw["trainval"], raw["test"] = rest, test
    if "trainval" in raw:
        raw["train"], raw["val"] = _carve(raw.pop("trainval"), cfg.val_fraction)
    return raw


def _crop_size(arg: str) -> int:
    """`photos` are 64-px crops; `photos:SIZE` crops SIZE px (what reconstruction uses: the model's own size)."""
    if not arg:
        return 64
    if not arg.isdigit() or not 8 <= int(arg) <= 96:  # the val strip is 96 px wide
        raise MinrError(f"photos:{arg}: the crop size must be a whole number of pixels from 8 to 96")
    return int(arg)


def data_inputs(cfg: DataConfig) -> list[Path]:
    """The folders whose contents are the dataset: no output may be written inside them (a run folder in an
    ImageFolder would become a class). Fashion-MNIST's root only holds IDX files by name, so it is not one."""
    kind, _, arg = cfg.name.partition(":")
    return [Path(arg).expanduser()] if kind in FOLDERS and arg else []


def check_classification(labels: np.ndarray, classes: tuple[str, ...], what: str) -> int:
    """The number of classes for a classifier (a probe, fine-tuning) trained on `labels` (`what`: which split of
    which dataset), or a one-line error: multi-label attributes, or images of fewer than two classes (any
    classifier scores 100% on one)."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise MinrError(
            f"{what}: the dataset has multi-label attributes; classification needs one label per image "
            "(use an ImageFolder-style dataset)"
        )
    present = np.unique(labels)
    if len(present) < 2:
        only = classes[int(present[0])] if len(present) else "none"
        raise MinrError(
            f"{what} holds {len(labels)} image(s) of one class ({only!r}); a classifier needs images of at least "
            "two classes (raise --max-images, or add a folder per class)"
        )
    return len(classes)


def check_same_data(stored: dict[str, str] | None, current: dict[str, str], where: Path) -> None:
    """Refuse to resume a run on other images than it was trained on: the splits' fingerprints must match (a
    checkpoint from before fingerprints were stored cannot be checked)."""
    for split, fp in current.items():
        if stored and stored.get(split) not in (None, fp):
            raise MinrError(
                f"--resume into {where}: the {split} data differ from the run's (fingerprint {stored[split]}, now "
                f"{fp}): other images or labels than it was trained on; point --data-root or --dataset at the "
                "run's own data, or start a new --out"
            )


def load_split(cfg: DataConfig, split: str, *, image_size: int, in_chans: int) -> ImageDataset:
    """One split of the configured dataset, at the model's resolution and channel count."""
    if split not in SPLITS:
        raise MinrError(f"unknown split {split!r}; use train, val or test")
    source = _cap(_sources(cfg)[split], cfg.max_images)
    if source.files is not None and cfg.skip_bad_images:
        good = np.asarray([readable(f) for f in source.files])
        if not good.all():
            bad = [f for f, g in zip(source.files, good, strict=True) if not g]
            warnings.warn(f"skipping {len(bad)} unreadable image(s) in {split}, e.g. {bad[0]}", stacklevel=2)
            source = source.subset(np.flatnonzero(good))
    return ImageDataset(source, image_size=image_size, in_chans=in_chans, name=cfg.name, split=split)
