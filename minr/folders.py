"""Folder datasets: ImageFolder (`train/<class>/*`, `<class>/*` or a flat folder), MIT Indoor67 and CelebA.

Every split of a dataset takes its class list from train, so a label means the same class everywhere. A list or
attribute file that is short, names unknown images or leaves a split empty is a one-line error naming the file and
line; a folder without images says which formats are read and what it holds instead.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS

from minr.errors import MinrError
from minr.sources import Source


def _formats() -> str:
    return ", ".join(IMG_EXTENSIONS)


def _no_images(root: Path, layout: str) -> MinrError:
    """Why a folder gave no images: the formats minr reads, and what the folder holds instead."""
    found = Counter(p.suffix.lower() or "(no suffix)" for p in root.rglob("*") if p.is_file()) if root.is_dir() else {}
    held = ", ".join(f"{n} {ext}" for ext, n in sorted(found.items(), key=lambda kv: -kv[1])[:3])
    return MinrError(
        f"no images found in {root}; expected {layout}, with images in one of {_formats()}"
        + (f" (it holds {held} files)" if held else " (it is empty)")
    )


def _image_files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMG_EXTENSIONS and p.is_file()]


def _class_dirs(root: Path) -> list[str]:
    """Class folders: every sub-folder but hidden ones (.ipynb_checkpoints, minr's own .partial caches)."""
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []


def _scan_classes(
    root: Path, classes: tuple[str, ...] | None = None, *, flat_ok: bool = False
) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Images of `root/<class>/...`; with `classes` (the train split's), each folder's label is its index there,
    so every split of a dataset agrees on what label 3 means. `flat_ok`: images directly in `root` would have
    been read too (what the error says)."""
    names = _class_dirs(root)
    if classes is not None:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise MinrError(
                f"{root} has class folder {unknown[0]!r}, which the train split lacks; every split must use the "
                f"train split's classes ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
            )
    classes = classes or tuple(names)
    found = {name: _image_files(root / name) for name in names}
    if not any(found.values()):
        flat = f"{root}/<image> or " if flat_ok else ""
        raise _no_images(root, f"{flat}{root}/<class>/<image> (ImageFolder layout)")
    empty = [name for name, f in found.items() if not f]
    if empty:
        raise MinrError(f"class folder {root / empty[0]} holds no images (minr reads {_formats()}); fill or remove it")
    files = [f for name in names for f in found[name]]
    labels = [classes.index(name) for name in names for _ in found[name]]
    return files, labels, classes


def _files_source(files: list[str], labels: list[int], classes: tuple[str, ...]) -> Source:
    return Source(labels=np.asarray(labels, dtype=np.int64), classes=classes, files=tuple(files))


def load_imagefolder(path: Path) -> dict[str, Source]:
    """`train/<class>/*` and `val/<class>/*` (Imagenette: its val is our test), optionally `test/<class>/*`;
    a `<class>/*` folder; or a flat folder of images (one class). Val and test are carved where missing; every
    split takes its class list from train."""
    _need_dir(path, "imagefolder")
    flat = [f for f in _image_files(path) if Path(f).parent == path]
    if flat and not _class_dirs(path):
        return {"all": _files_source(flat, [0] * len(flat), (path.name,))}
    if not (path / "train").is_dir():
        return {"all": _files_source(*_scan_classes(path, flat_ok=True))}
    train = _files_source(*_scan_classes(path / "train"))
    others = {s: _files_source(*_scan_classes(path / s, train.classes)) for s in ("val", "test") if (path / s).is_dir()}
    if "test" in others:
        return {"train": train, **others} if "val" in others else {"trainval": train, "test": others["test"]}
    if "val" in others:
        return {"trainval": train, "test": others["val"]}
    return {"all": train}


def _lines(path: Path, what: str) -> list[str]:
    """The non-blank lines of a list file, or a one-line error that names it."""
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise MinrError(f"{what}: cannot read {path} ({e.__class__.__name__}); is it a text file?") from None


def load_indoor67(path: Path) -> dict[str, Source]:
    """`Images/<class>/*.jpg` with `TrainImages.txt` / `TestImages.txt` listing `class/file.jpg` per line."""
    _need_dir(path, "indoor67")
    images = path / "Images"
    classes = _class_dirs(images)
    out = {}
    for split, list_name in (("trainval", "TrainImages.txt"), ("test", "TestImages.txt")):
        lst = path / list_name
        if not lst.is_file() or not classes:
            raise MinrError(f"indoor67: {lst} or {images} is missing; expected the MIT Indoor67 layout")
        rels = _lines(lst, "indoor67")
        if not rels:
            raise MinrError(f"indoor67: {lst} lists no images; expected one `class/file.jpg` per line")
        unknown = [r for r in rels if r.split("/")[0] not in classes]
        if unknown:
            raise MinrError(f"indoor67: {lst} lists {unknown[0]!r}, whose class folder is not in {images}")
        missing = [r for r in rels if not (images / r).is_file()]
        if missing:
            raise MinrError(
                f"indoor67: {lst} lists {len(missing)} image(s) that are not in {images}, e.g. {missing[0]!r}"
            )
        files = [str(images / r) for r in rels]
        out[split] = _files_source(files, [classes.index(r.split("/")[0]) for r in rels], tuple(classes))
    return out


def _celeba_partition(part_file: Path) -> dict[str, str]:
    partition = {}
    for n, ln in enumerate(_lines(part_file, "celeba"), 1):
        fields = ln.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise MinrError(f"celeba: {part_file} line {n} is {ln[:60]!r}; expected `<image> <0|1|2>`")
        partition[fields[0]] = fields[1]
    if not partition:
        raise MinrError(f"celeba: {part_file} lists no images")
    return partition


def _celeba_attributes(attr_file: Path) -> tuple[tuple[str, ...], dict[str, list[bool]]]:
    """(attribute names, image -> attributes) from list_attr_celeba.txt: a count, the names, then one row per
    image of its name and a 1 or -1 per attribute."""
    lines = _lines(attr_file, "celeba")
    if len(lines) < 2 or not lines[1].split():
        raise MinrError(f"celeba: {attr_file} has no attribute names (line 2); expected torchvision's CelebA layout")
    names = tuple(lines[1].split())
    attrs = {}
    for n, ln in enumerate(lines[2:], 3):
        fields = ln.split()
        if len(fields) != len(names) + 1 or any(v not in ("1", "-1") for v in fields[1:]):
            raise MinrError(
                f"celeba: {attr_file} line {n} is not `<image>` and {len(names)} values of 1 or -1: {ln[:60]!r}"
            )
        attrs[fields[0]] = [v == "1" for v in fields[1:]]
    return names, attrs


def load_celeba(path: Path) -> dict[str, Source]:
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
    partition = _celeba_partition(part_file)
    names, attrs = _celeba_attributes(attr_file)
    no_attrs = [k for k in partition if k not in attrs]
    if no_attrs:
        raise MinrError(f"celeba: {no_attrs[0]} is in {part_file.name} but not in {attr_file}; the lists disagree")
    on_disk = set(os.listdir(img_dir)) if img_dir.is_dir() else set()
    absent = [k for k in partition if k not in on_disk]
    if absent:
        raise MinrError(
            f"celeba: {len(absent)} image(s) listed in {part_file.name} are not in {img_dir}, e.g. {absent[0]}"
        )
    out = {}
    for code, split in (("0", "train"), ("1", "val"), ("2", "test")):
        ids = sorted(k for k, v in partition.items() if v == code)
        if not ids:
            raise MinrError(f"celeba: {part_file} puts no image in the {split} split ({code}); each split needs images")
        out[split] = Source(
            labels=np.asarray([attrs[k] for k in ids], dtype=np.int64).reshape(len(ids), -1),
            classes=names,
            files=tuple(str(img_dir / k) for k in ids),
        )
    return out


def _need_dir(path: Path, kind: str) -> None:
    if not path.exists():
        raise MinrError(f"{kind}: data folder {path} does not exist; check the path after '{kind}:'")
    if not path.is_dir():
        raise MinrError(f"{kind}: {path} is a file, not a folder; give the dataset's folder after '{kind}:'")
