"""Segmentation datasets through mmseg's own dataset classes and pipeline, with checks that name the bad file.

Names: `fashion-scenes:PATH` (from `minrctl data make-fashion-scenes`), `ade20k:PATH` (mmseg's
`ADEChallengeData2016` layout, label 0 = ignore), `seg:PATH` (any `img_dir/{train,val}` + `ann_dir/{train,val}`
folder; classes from `classes.json` or `classes.txt`, else from the largest label).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.registry import TRANSFORMS
from PIL import Image

from minr.errors import MinrError
from minr.io import write_json

IMG_SUFFIXES = (".png", ".jpg", ".jpeg")
init_default_scope("mmseg")  # pipeline and model names resolve in mmseg's registries
MMLogger.get_current_instance().setLevel(logging.WARNING)  # it logs every parameter's init at INFO


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Fails with the annotation's path when a label is neither a class nor the ignore index."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def transform(self, results: dict) -> dict:
        seg = results["gt_seg_map"]
        bad = seg[(seg >= self.num_classes) & (seg != self.ignore_index)]
        if bad.size:
            raise MinrError(
                f"annotation {results['seg_map_path']} has label {int(bad.max())} but the dataset has "
                f"{self.num_classes} classes (0..{self.num_classes - 1}, {self.ignore_index} = ignore)"
            )
        if seg.shape[:2] != results["img"].shape[:2]:
            raise MinrError(
                f"annotation {results['seg_map_path']} is {seg.shape[1]}x{seg.shape[0]} but its image is "
                f"{results['img'].shape[1]}x{results['img'].shape[0]}"
            )
        return results


@dataclass(frozen=True)
class SegDatasetInfo:
    kind: str
    root: Path
    classes: tuple[str, ...]
    img_dirs: dict[str, str]
    ann_dirs: dict[str, str]
    img_suffix: str
    reduce_zero_label: bool = False


def resolve(name: str) -> SegDatasetInfo:
    """The dataset a name points to, every file checked before any training: layout, one image format, classes,
    image/annotation pairs and sizes, and (decoding each file once) readable images and valid label maps."""
    kind, sep, path = name.partition(":")
    if not sep:
        kind, path = "seg", name
    if kind not in ("fashion-scenes", "ade20k", "seg"):
        raise MinrError(f"unknown segmentation dataset {name!r}; use fashion-scenes:PATH, ade20k:PATH or seg:PATH")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MinrError(f"segmentation data folder {root} does not exist")
    if kind == "ade20k":
        base = root / "ADEChallengeData2016" if (root / "ADEChallengeData2016").is_dir() else root
        info = SegDatasetInfo(
            "ade20k",
            base,
            tuple(ADE20KDataset.METAINFO["classes"]),
            {"train": "images/training", "val": "images/validation"},
            {"train": "annotations/training", "val": "annotations/validation"},
            ".jpg",
            True,
        )
    else:
        dirs = {s: f"img_dir/{s}" for s in ("train", "val")}
        anns = {s: f"ann_dir/{s}" for s in ("train", "val")}
        info = SegDatasetInfo(kind, root, (), dirs, anns, _suffix(root, dirs))
        info = SegDatasetInfo(**{**info.__dict__, "classes": _classes(root, info)})
    for split in ("train", "val"):
        check_pairs(info, split)
    check_files(info)
    return info


def label_cache_dir() -> Path:
    base = Path(os.environ.get("MINR_CACHE", Path.home() / ".cache" / "minr" / "features"))
    return base.parent / "seg-labels"


def _pairs(info: SegDatasetInfo) -> list[tuple[Path, Path]]:
    out = []
    for split in ("train", "val"):
        img_dir, ann_dir = info.root / info.img_dirs[split], info.root / info.ann_dirs[split]
        out += [(p, ann_dir / (p.stem + ".png")) for p in sorted(img_dir.glob("*" + info.img_suffix))]
    return out


def check_files(info: SegDatasetInfo) -> None:
    """Every image decodes and every annotation is a one-channel label map of classes or the ignore index, checked
    up front (so a short run cannot miss a bad file, and a bad validation file cannot fail only after training).
    One pass over the files, remembered under a fingerprint of their names, sizes and times."""
    pairs = _pairs(info)
    h = hashlib.sha256(f"{info.kind}|{len(info.classes)}|{info.reduce_zero_label}|v2".encode())
    for p in (f for pair in pairs for f in pair):
        st = p.stat()
        h.update(f"{p.relative_to(info.root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    done = label_cache_dir() / f"{h.hexdigest()[:32]}.json"
    if done.is_file():
        return
    for img, ann in pairs:
        _decode(img, "image")
        _check_labels(ann, _decode(ann, "annotation"), info)
    with contextlib.suppress(MinrError):  # an unwritable cache only means checking again next time
        write_json(done, {"files": 2 * len(pairs), "classes": len(info.classes)})


def _decode(path: Path, what: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MinrError(f"{what} {path} cannot be read ({e}); replace or remove it (with its pair)") from None


def _check_labels(path: Path, img: Image.Image, info: SegDatasetInfo) -> None:
    if img.mode not in ("L", "P", "I;16", "I"):
        raise MinrError(
            f"annotation {path} is a {img.mode} image; labels must be one channel (a grayscale or palette PNG "
            "holding one class index per pixel)"
        )
    values = np.unique(np.asarray(img))
    n = len(info.classes)
    top = n if info.reduce_zero_label else n - 1  # ADE20K's raw labels are 1..150, 0 = ignore
    bad = values[(values > top) & (values != 255)]
    if bad.size:
        raise MinrError(
            f"annotation {path} has label {int(bad.max())} but the dataset has {n} classes "
            f"({'1..' + str(n) + ', 0' if info.reduce_zero_label else '0..' + str(n - 1) + ', 255'} = ignore)"
        )


def _suffix(root: Path, dirs: dict[str, str]) -> str:
    """The one image suffix of both splits (mmseg lists one suffix per dataset, case included)."""
    found: dict[str, Path] = {}
    for split in ("train", "val"):
        folder = root / dirs[split]
        if not folder.is_dir():
            raise MinrError(
                f"{folder} is missing; expected the mmseg layout img_dir/{{train,val}} + ann_dir/{{train,val}}"
            )
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMG_SUFFIXES:
                found.setdefault(p.suffix, p)
    if not found:
        raise MinrError(f"no images (.png/.jpg/.jpeg) in {root / dirs['train']} or {root / dirs['val']}")
    if len(found) > 1:
        examples = ", ".join(str(p) for p in found.values())
        raise MinrError(
            f"{root}/img_dir holds images of several suffixes ({examples}); mmseg reads one per dataset: "
            "convert them to one format and suffix"
        )
    return next(iter(found))


def _classes(root: Path, info: SegDatasetInfo) -> tuple[str, ...]:
    if (root / "classes.json").is_file():
        return _classes_json(root / "classes.json")
    if (root / "classes.txt").is_file():
        names = tuple(ln.strip() for ln in (root / "classes.txt").read_text().splitlines() if ln.strip())
        return _checked_classes(names, root / "classes.txt")
    top = 0
    for p in (root / info.ann_dirs["train"]).glob("*.png"):
        a = np.asarray(_decode(p, "annotation"))
        top = max(top, int(a[a != 255].max(initial=0)))
    return tuple(str(i) for i in range(top + 1))


def _classes_json(path: Path) -> tuple[str, ...]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MinrError(f'{path} is not valid JSON ({e}); it should be {{"classes": ["name", ...]}}') from None
    names = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise MinrError(f'{path} needs a "classes" list of names, e.g. {{"classes": ["background", "cat"]}}')
    return _checked_classes(tuple(names), path)


def _checked_classes(names: tuple[str, ...], path: Path) -> tuple[str, ...]:
    if len(names) < 2:
        raise MinrError(f"{path} lists {len(names)} class(es); segmentation needs at least 2 (background included)")
    if len(names) > 255:
        raise MinrError(f"{path} lists {len(names)} classes; at most 255 fit, 255 being the ignore label")
    dup = next((c for c in names if names.count(c) > 1), None)
    if dup is not None:
        raise MinrError(f"{path} lists class {dup!r} twice; each class needs its own name")
    return names


def check_pairs(info: SegDatasetInfo, split: str) -> None:
    """Every image has its annotation (same stem, .png) and the reverse, with the same size."""
    img_dir, ann_dir = info.root / info.img_dirs[split], info.root / info.ann_dirs[split]
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise MinrError(f"{d} is missing; expected the {info.kind} layout")
    imgs = {p.stem: p for p in img_dir.iterdir() if p.suffix == info.img_suffix}
    anns = {p.stem: p for p in ann_dir.iterdir() if p.suffix.lower() == ".png"}
    for stem in sorted(imgs.keys() - anns.keys())[:1]:
        raise MinrError(f"image {imgs[stem]} has no annotation {ann_dir / (stem + '.png')}")
    for stem in sorted(anns.keys() - imgs.keys())[:1]:
        raise MinrError(f"annotation {anns[stem]} has no image in {img_dir}")
    if not imgs:
        raise MinrError(f"no {info.img_suffix} images in {img_dir}")
    for stem in sorted(imgs):
        a, b = _size(imgs[stem], "image"), _size(anns[stem], "annotation")
        if a != b:
            raise MinrError(f"annotation {anns[stem]} is {b[0]}x{b[1]} but image {imgs[stem]} is {a[0]}x{a[1]}")


def _size(path: Path, what: str) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MinrError(f"{what} {path} cannot be read ({e}); replace or remove it (with its pair)") from None


def build_dataset(
    info: SegDatasetInfo, split: str, *, in_chans: int, max_images: int | None = None, crop: int | None = None
) -> BaseSegDataset:
    """mmseg's dataset class and pipeline; `crop` enables mmseg's random resize/crop/flip for large images."""
    load = dict(type="LoadImageFromFile", color_type="grayscale" if in_chans == 1 else "color")
    pipeline = [
        load,
        dict(type="LoadAnnotations"),  # reduce_zero_label comes from the dataset class (ADE20K: True)
        dict(type="CheckSegLabels", num_classes=len(info.classes)),
    ]
    if crop and split == "train":
        pipeline += [
            dict(type="RandomResize", scale=(4 * crop, crop), ratio_range=(0.5, 2.0), keep_ratio=True),
            dict(type="RandomCrop", crop_size=(crop, crop), cat_max_ratio=0.75),
            dict(type="RandomFlip", prob=0.5),
        ]
    elif crop:
        pipeline.append(dict(type="Resize", scale=(4 * crop, crop), keep_ratio=True))
    pipeline.append(dict(type="PackSegInputs"))
    cls = ADE20KDataset if info.kind == "ade20k" else BaseSegDataset
    kwargs = (
        {}
        if info.kind == "ade20k"
        else {
            "metainfo": {"classes": info.classes},
            "img_suffix": info.img_suffix,
            "seg_map_suffix": ".png",
        }
    )
    return cls(
        data_root=str(info.root),
        data_prefix={"img_path": info.img_dirs[split], "seg_map_path": info.ann_dirs[split]},
        pipeline=pipeline,
        indices=max_images,
        serialize_data=False,
        **kwargs,
    )
