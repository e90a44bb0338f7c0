"""Where images come from, before any split or transform: IDX files, scikit-learn's bundled sets, folders.

`Source` is a split's raw material (arrays or file paths, labels, class names). Fashion-MNIST comes from IDX
files (an explicit `--data-root`, `$MINR_DATA`, Debian's package, or torchvision's download when online);
`digits` and `photos` ship inside scikit-learn; folders (`minr.folders`) follow the ImageFolder, Indoor67 and
CelebA layouts, or are any flat folder of images. Every damaged file is a one-line error that names it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from minr.errors import MinrError
from minr.io import created_only

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

    def check(self, where: str) -> Source:
        """This source, or a one-line error when it cannot be trained or evaluated on: no images, or labels outside
        its classes (a damaged labels file, splits whose class lists disagree)."""
        if len(self) == 0:
            raise MinrError(f"{where} holds no images; check the dataset's files")
        if self.labels.ndim == 1:
            bad = self.labels[(self.labels < 0) | (self.labels >= len(self.classes))]
            if len(bad):
                raise MinrError(
                    f"{where} has label {int(bad[0])} but {len(self.classes)} classes (labels must be 0.."
                    f"{len(self.classes) - 1}); the labels file is damaged or belongs to another dataset"
                )
        return self

    def subset(self, idx: np.ndarray) -> Source:
        return Source(
            labels=self.labels[idx],
            classes=self.classes,
            arrays=None if self.arrays is None else self.arrays[idx],
            files=None if self.files is None else tuple(self.files[i] for i in idx),
        )


def open_image(path: str) -> Image.Image:
    """An image file as an 8-bit "L" or "RGB" PIL image, whatever its mode (16-bit and float images are scaled,
    palettes and alpha dropped), or a one-line error that names the file: unreadable, declaring more pixels than
    PIL's decompression-bomb limit, or holding NaN or infinite values."""
    try:
        with Image.open(path) as img:
            img.load()
            return _eight_bit(img, path)
    except Image.DecompressionBombError:
        w, h = _declared_size(path)
        raise MinrError(
            f"image {path} declares {w}x{h} pixels, over PIL's limit of {2 * Image.MAX_IMAGE_PIXELS:,} (a "
            "decompression bomb, or a huge scan); shrink or remove it, or pass --skip-bad-images"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise MinrError(
            f"cannot read image {path} ({e.__class__.__name__}); fix or remove it, or pass --skip-bad-images"
        ) from None


def _declared_size(path: str) -> tuple[int, int]:
    """The width and height an image's header declares, without decoding it (PIL's size check switched off)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as img:
            return img.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def readable(path: str) -> bool:
    try:
        open_image(path)
        return True
    except MinrError:
        return False


def _eight_bit(img: Image.Image, path: str) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():
            raise MinrError(
                f"image {path} holds NaN or infinite pixel values; fix or remove it, or pass --skip-bad-images"
            )
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
        if len(images) == 0:
            raise MinrError(f"Fashion-MNIST {prefix} files in {found} hold 0 images; reinstall them")
        source = Source(labels=labels.astype(np.int64), classes=FASHION_CLASSES, arrays=images)
        return source.check(f"Fashion-MNIST {prefix} labels in {found}")

    return part("train"), part("t10k")


def _download_fashion(root: Path) -> Path | None:
    """torchvision's download into `root`/FashionMNIST/raw; a failed one leaves `root` as it was."""
    from torchvision.datasets import FashionMNIST

    try:
        with created_only(root / "FashionMNIST"):
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
