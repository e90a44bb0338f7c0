"""Shared fixtures: a seeded RNG for every test, and small real datasets written in their standard layouts."""

from __future__ import annotations

import contextlib
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minr.sources import DEBIAN_FASHION_MNIST, read_idx

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def killed_after_first_checkpoint(monkeypatch):
    """Within the block, the first checkpoint is written and then the run dies (KeyboardInterrupt, as a kill)."""
    import minr.loop

    real = minr.loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(minr.loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(minr.loop, "save_checkpoint", real)


def kill_mid_run(proc, ckpt: Path, kill, *, before: int = 12, timeout: float = 180) -> int:
    """Call `kill()` once `proc`'s run has checkpointed a step in [3, before), wait for it, and return the step
    it left (the test asserts it is below `before`: killed mid-run)."""
    import time

    from minr.checkpoint import load_checkpoint

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and 3 <= load_checkpoint(ckpt).meta["step"] < before:
            break
        time.sleep(0.05)
    kill()
    proc.wait()
    return load_checkpoint(ckpt).meta["step"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches that tests fill (features, segmentation label checks) live in the session's temporary folder."""
    import os

    os.environ["MINR_CACHE"] = str(tmp_path_factory.mktemp("cache") / "features")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fashion_subset(tmp_path_factory, n_train: int, n_test: int) -> Path:
    src = Path(DEBIAN_FASHION_MNIST)
    if not (src / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is missing from {src}: run `apt-get install -y dataset-fashion-mnist`")
    out = tmp_path_factory.mktemp("fashion")
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(out / f"{prefix}-images-idx3-ubyte.gz", read_idx(src / f"{prefix}-images-idx3-ubyte.gz")[:n])
        write_idx(out / f"{prefix}-labels-idx1-ubyte.gz", read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")[:n])
    return out


@pytest.fixture(scope="session")
def fashion_small(tmp_path_factory) -> Path:
    """The first 640 training and 200 test images of the real Fashion-MNIST, as IDX files in a folder."""
    return _fashion_subset(tmp_path_factory, 640, 200)


@pytest.fixture(scope="session")
def fashion_mid(tmp_path_factory) -> Path:
    """The first 2,400 training and 500 test images of the real Fashion-MNIST."""
    return _fashion_subset(tmp_path_factory, 2400, 500)


def photo_crops(n: int, size: int = 40) -> list[np.ndarray]:
    """Real RGB crops from scikit-learn's two sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    crops = []
    for i in range(n):
        p = photos[i % 2]
        y, x = rng.integers(0, p.shape[0] - size), rng.integers(0, p.shape[1] - size)
        crops.append(p[y : y + size, x : x + size].copy())
    return crops


def save_images(folder: Path, names: list[str], ext: str = ".jpg") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    crops = photo_crops(len(names))
    for name, crop in zip(names, crops, strict=True):
        Image.fromarray(crop).save(folder / f"{name}{ext}")
    return [f"{n}{ext}" for n in names]


@pytest.fixture
def imagefolder(tmp_path) -> Path:
    """Imagenette's layout: train/<class>/*.JPEG and val/<class>/*.JPEG, two classes (in a folder of its own: no
    output may be written inside a dataset folder)."""
    root = tmp_path / "imagefolder"
    for split, n in (("train", 6), ("val", 3)):
        for c in ("n01440764", "n02102040"):
            save_images(root / split / c, [f"{c}_{split}_{i}" for i in range(n)], ".JPEG")
    return root


def make_checkpoint(model_name: str, path: Path, *, data_root: Path | None = None, seed: int = 0) -> Path:
    """An untrained but real minr checkpoint of a registered model (what `pretrain` writes at step 0)."""
    from minr.build import default_config, initial_checkpoint

    cfg = default_config(model_name, {"data.root": str(data_root) if data_root else None, "train.seed": seed})
    return initial_checkpoint(cfg, path, git_sha="test")


from tests.hostile_files import files  # noqa: E402,F401  (the hostile-input tests' damaged files, one set per module)
