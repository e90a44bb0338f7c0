"""Where images come from, before any split or transform: IDX files, scikit-learn's bundled sets, folders.

`Source` is a split's raw material (arrays or file paths, labels, class names). Fashion-MNIST comes from IDX
files (an explicit `--data-root`, `$MINR_DATA`, Debian's package, or torchvision's download when online);
`digits` and `photos` ship inside scikit-learn; folders follow the ImageFolder, Indoor67 and CelebA layouts, or
are any flat folder of images. Every damaged file is a one-line error that names it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from minr.errors import MinrError

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


def open_image(path: str) -> Image.Image:
    """An image file as an 8-bit "L" or "RGB" PIL image, whatever its mode (16-bit and float images are scaled,
    palettes and alpha dropped), or a one-line error that names the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return _eight_bit(img)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise MinrError(
            f"cannot read image {path} ({e.__class__.__name__}); fix or remove it, or pass --skip-bad-images"
        ) from None


def readable(path: str) -> bool:
    try:
        open_image(path)
        return True
    except MinrError:
        return False


def _eight_bit(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        return Image.fromarray(np.clip(np.round(a / top * 255), 0, 255).astype(np.uint8), "L")
    return img.convert("L" if img.mode in ("1", "L", "LA") else "RGB")


# -- in-memory datasets ---------------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not): the format of MNIST and Fashion-MNIST. A damaged,
    empty or cut file is a one-line error that names it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise MinrError(
            f"cannot read {path} ({e.__class__.__name__}: {e}); the file is damaged, reinstall it"
        ) from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise MinrError(f"{path} is not an IDX file of bytes (empty or wrong header); reinstall it")
    ndim = data[3]
    offset = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != offset + int(np.prod(shape)):
        raise MinrError(f"{path} holds {len(data) - offset} bytes of data but its header says {shape}; it is cut short")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape).copy()


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


def load_fashion(cfg_root: str | None) -> tuple[Source, Source]:
    if cfg_root:  # an explicit place is used or refused, never silently replaced by another copy
        root = Path(cfg_root).expanduser()
        found = _find_fashion(root)
        if found is None and root.is_dir() and not os.environ.get("MINR_OFFLINE"):
            found = _download_fashion(root)
        if found is None:
            raise MinrError(
                f"--data-root {root}: no Fashion-MNIST there (expected train-images-idx3-ubyte.gz and the other "
                "IDX files); point it at the folder that holds them, or leave it out to use the system copy"
            )
    else:
        roots = fashion_mnist_roots(None)
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
            images, labels = read_idx(pick("images-idx3")), read_idx(pick("labels-idx1"))
        except StopIteration:
            raise MinrError(f"Fashion-MNIST {prefix} files are incomplete in {found}; reinstall them") from None
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise MinrError(
                f"Fashion-MNIST {prefix} files in {found} do not match: {images.shape} images but {labels.shape} "
                "labels; reinstall them"
            )
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


def load_photos(size: int = 64) -> dict[str, Source]:
    """Deterministic `size`-px crops of scikit-learn's two sample photographs (china.jpg, flower.jpg, 427x640 RGB;
    the label is the photo). Train crops come from the left 65% of each photo, val and test from separate
    strips on the right, so no test pixel was ever a training pixel."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    regions = {"train": (0, 416, 1200), "val": (416, 512, 150), "test": (512, 640, 300)}
    rng = np.random.default_rng(SPLIT_SEED)
    out = {}
    for split, (x0, x1, n) in regions.items():
        crops, labels = [], []
        for i in range(n):
            photo = images[i % 2]
            y, x = rng.integers(0, photo.shape[0] - size + 1), rng.integers(x0, x1 - size + 1)
            crops.append(photo[y : y + size, x : x + size])
            labels.append(i % 2)
        out[split] = Source(labels=np.asarray(labels, np.int64), classes=("china", "flower"), arrays=np.stack(crops))
    return out


def load_digits() -> Source:
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


def load_imagefolder(path: Path) -> dict[str, Source]:
    """`train/<class>/*` and `val/<class>/*` (Imagenette: its val is our test), optionally `test/<class>/*`;
    a `<class>/*` folder; or a flat folder of images (one class). Val and test are carved where missing."""
    _need_dir(path, "imagefolder")
    flat = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if flat and not any(p.is_dir() for p in path.iterdir()):
        return {"all": _files_source(flat, [0] * len(flat), (path.name,))}
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


def load_indoor67(path: Path) -> dict[str, Source]:
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
