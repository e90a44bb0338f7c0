"""Datasets chosen by name, with explicit train / val / test splits.

Names: `fashion-mnist`, `digits`, `imagefolder:PATH`, `indoor67:PATH`, `celeba:PATH`. Every item is
`(image, label, index)`: a float (C, H, W) image in [0, 1] at the model's resolution and channel count, its label
(an int, or CelebA's 40 attributes), and its index in the split (which seeds its mask). Where a dataset has no
validation split, it is carved from train with a fixed seed (never the run's seed), so every run sees the same one.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from minr.config import DataConfig
from minr.errors import MinrError

SPLITS = ("train", "val", "test")
SPLIT_SEED = 0
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class Source:
    """What a dataset split is made of, before any transform: in-memory arrays or a list of files."""

    labels: np.ndarray  # (N,) int, or (N, A) for multi-label attributes
    classes: tuple[str, ...]
    arrays: np.ndarray | None = None  # (N, H, W) or (N, H, W, 3) uint8
    files: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> Source:
        return Source(
            labels=self.labels[idx],
            classes=self.classes,
            arrays=None if self.arrays is None else self.arrays[idx],
            files=None if self.files is None else tuple(self.files[i] for i in idx),
        )


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
            img = self.transform(_open_image(self.source.files[i]))
        label = torch.as_tensor(self.source.labels[i])
        return img, label, i

    def fingerprint(self) -> str:
        """A hash of what this split holds (files or pixels and labels) and of its transform."""
        h = hashlib.sha256(f"{self.name}|{self.split}|{self.image_size}|{self.in_chans}".encode())
        if self.source.files is not None:
            h.update("\n".join(self.source.files).encode())
        else:
            h.update(self.source.arrays.tobytes())
        h.update(np.ascontiguousarray(self.source.labels).tobytes())
        return h.hexdigest()[:16]


def _open_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MinrError(
            f"cannot read image {path} ({e.__class__.__name__}); fix or remove it, or pass --skip-bad-images"
        ) from None


def _readable(path: str) -> bool:
    try:
        _open_image(path)
        return True
    except MinrError:
        return False


# -- in-memory datasets ---------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def _fashion_dirs(root: Path) -> list[Path]:
    return [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]


def _find_fashion(root: Path) -> Path | None:
    for d in _fashion_dirs(root):
        for suffix in (".gz", ""):
            if (d / f"train-images-idx3-ubyte{suffix}").is_file():
                return d
    return None


def fashion_mnist_roots(cfg_root: str | None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order."""
    roots = [cfg_root, os.environ.get("MINR_DATA"), DEBIAN_FASHION_MNIST]
    return [Path(r).expanduser() for r in roots if r]


def _load_fashion(cfg_root: str | None) -> tuple[Source, Source]:
    roots = fashion_mnist_roots(cfg_root)
    found = next((d for r in roots if (d := _find_fashion(r)) is not None), None)
    if found is None and roots and not os.environ.get("MINR_OFFLINE"):
        found = _download_fashion(roots[0])
    if found is None:
        tried = ", ".join(str(r) for r in roots)
        raise MinrError(
            f"Fashion-MNIST not found (looked in {tried}; download failed or offline); install it with "
            f"`apt-get install -y dataset-fashion-mnist` or pass --data-root DIR holding the IDX files"
        )

    def part(prefix: str) -> Source:
        def pick(kind: str) -> Path:
            return next(
                p for p in (found / f"{prefix}-{kind}-ubyte.gz", found / f"{prefix}-{kind}-ubyte") if p.is_file()
            )

        try:
            images, labels = _read_idx(pick("images-idx3")), _read_idx(pick("labels-idx1"))
        except (OSError, StopIteration, ValueError, EOFError) as e:
            raise MinrError(f"cannot read Fashion-MNIST {prefix} files in {found} ({e}); reinstall them") from None
        return Source(labels=labels.astype(np.int64), classes=FASHION_CLASSES, arrays=images)

    return part("train"), part("t10k")


def _download_fashion(root: Path) -> Path | None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception:  # offline, a mirror down, a read-only root: the caller explains where to get it
        return None
    return _find_fashion(root)


def _load_digits() -> Source:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)
    return Source(labels=d.target.astype(np.int64), classes=tuple(str(c) for c in range(10)), arrays=images)


# -- folder datasets ------------------------------------------------------------------------------------------
def _scan_classes(root: Path) -> tuple[list[str], list[int], tuple[str, ...]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    files, labels = [], []
    for c, name in enumerate(classes):
        for p in sorted((root / name).rglob("*")):
            if p.suffix.lower() in IMG_EXTENSIONS and p.is_file():
                files.append(str(p))
                labels.append(c)
    if not files:
        raise MinrError(f"no images found in {root}; expected {root}/<class>/<image>.jpg (ImageFolder layout)")
    return files, labels, tuple(classes)


def _files_source(files: list[str], labels: list[int], classes: tuple[str, ...]) -> Source:
    return Source(labels=np.asarray(labels, dtype=np.int64), classes=classes, files=tuple(files))


def _load_imagefolder(path: Path) -> dict[str, Source]:
    """`train/<class>/*` and `val/<class>/*` (Imagenette: its val is our test), optionally `test/<class>/*`;
    or a flat `<class>/*` folder, from which val and test are carved."""
    _need_dir(path, "imagefolder")
    if (path / "train").is_dir():
        train = _files_source(*_scan_classes(path / "train"))
        if (path / "test").is_dir():
            return {
                "train": train,
                "val": _files_source(*_scan_classes(path / "val")),
                "test": _files_source(*_scan_classes(path / "test")),
            }
        if (path / "val").is_dir():
            return {"trainval": train, "test": _files_source(*_scan_classes(path / "val"))}
        return {"all": train}
    return {"all": _files_source(*_scan_classes(path))}


def _load_indoor67(path: Path) -> dict[str, Source]:
    """`Images/<class>/*.jpg` with `TrainImages.txt` / `TestImages.txt` listing `class/file.jpg` per line."""
    _need_dir(path, "indoor67")
    classes = sorted(d.name for d in (path / "Images").iterdir() if d.is_dir()) if (path / "Images").is_dir() else []
    out = {}
    for split, list_name in (("trainval", "TrainImages.txt"), ("test", "TestImages.txt")):
        lst = path / list_name
        if not lst.is_file() or not classes:
            raise MinrError(f"indoor67: {lst} or {path / 'Images'} is missing; expected the MIT Indoor67 layout")
        rels = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
        unknown = [r for r in rels if r.split("/")[0] not in classes]
        if unknown:
            raise MinrError(f"indoor67: {lst} lists {unknown[0]!r}, whose class folder is not in {path / 'Images'}")
        files = [str(path / "Images" / r) for r in rels]
        out[split] = _files_source(files, [classes.index(r.split("/")[0]) for r in rels], tuple(classes))
    return out


def _load_celeba(path: Path) -> dict[str, Source]:
    """torchvision's CelebA layout: `img_align_celeba/`, `list_eval_partition.txt`, `list_attr_celeba.txt`
    (directly in PATH or in PATH/celeba). Labels are the 40 binary attributes; splits are the official ones."""
    _need_dir(path, "celeba")
    base = path / "celeba" if (path / "celeba" / "list_eval_partition.txt").is_file() else path
    part_file, attr_file, img_dir = (
        base / "list_eval_partition.txt",
        base / "list_attr_celeba.txt",
        base / "img_align_celeba",
    )
    for p in (part_file, attr_file, img_dir):
        if not p.exists():
            raise MinrError(f"celeba: {p} is missing; expected torchvision's CelebA layout")
    partition = dict(ln.split() for ln in part_file.read_text().splitlines() if ln.strip())
    lines = attr_file.read_text().splitlines()
    names = tuple(lines[1].split())
    attrs = {ln.split()[0]: [int(v) > 0 for v in ln.split()[1:]] for ln in lines[2:] if ln.strip()}
    out = {}
    for code, split in (("0", "train"), ("1", "val"), ("2", "test")):
        ids = sorted(k for k, v in partition.items() if v == code)
        out[split] = Source(
            labels=np.asarray([attrs[k] for k in ids], dtype=np.int64).reshape(len(ids), -1),
            classes=names,
            files=tuple(str(img_dir / k) for k in ids),
        )
    return out


def _need_dir(path: Path, kind: str) -> None:
    if not path.is_dir():
        raise MinrError(f"{kind}: data folder {path} does not exist; check the path after '{kind}:'")


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


@functools.lru_cache(maxsize=4)
def _sources(cfg: DataConfig) -> dict[str, Source]:
    """All splits of a dataset (cached: reading Fashion-MNIST's IDX files takes a second)."""
    name = cfg.name
    kind, _, arg = name.partition(":")
    if kind == "fashion-mnist" and not arg:
        train, test = _load_fashion(cfg.root)
        raw = {"trainval": train, "test": test}
    elif kind == "digits" and not arg:
        raw = {"all": _load_digits()}
    elif kind in ("imagefolder", "indoor67", "celeba") and arg:
        loader = {"imagefolder": _load_imagefolder, "indoor67": _load_indoor67, "celeba": _load_celeba}[kind]
        raw = loader(Path(arg).expanduser())
    else:
        raise MinrError(
            f"unknown dataset {name!r}; use fashion-mnist, digits, imagefolder:PATH, indoor67:PATH or celeba:PATH"
        )
    if "all" in raw:
        rest, test = _carve(raw.pop("all"), 0.2)
        raw["trainval"], raw["test"] = rest, test
    if "trainval" in raw:
        raw["train"], raw["val"] = _carve(raw.pop("trainval"), cfg.val_fraction)
    return raw


def load_split(cfg: DataConfig, split: str, *, image_size: int, in_chans: int) -> ImageDataset:
    """One split of the configured dataset, at the model's resolution and channel count."""
    if split not in SPLITS:
        raise MinrError(f"unknown split {split!r}; use train, val or test")
    source = _cap(_sources(cfg)[split], cfg.max_images)
    if source.files is not None and cfg.skip_bad_images:
        good = np.asarray([_readable(f) for f in source.files])
        if not good.all():
            bad = [f for f, g in zip(source.files, good, strict=True) if not g]
            warnings.warn(f"skipping {len(bad)} unreadable image(s) in {split}, e.g. {bad[0]}", stacklevel=2)
            source = source.subset(np.flatnonzero(good))
    return ImageDataset(source, image_size=image_size, in_chans=in_chans, name=cfg.name, split=split)
