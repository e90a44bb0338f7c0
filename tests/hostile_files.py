"""Shared data for the hostile-input tests: damaged and degenerate files, made once per module, and the checks
that a refusal is one line with exit code 2."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from minr.checkpoint import FORMAT, load_checkpoint
from minr.io import LOCK_NAME
from minr.sources import read_idx
from tests.conftest import make_checkpoint, save_images, write_idx


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG file whose header declares `width` x `height` pixels (what a decompression bomb looks like)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _celeba(root: Path, *, partition: str | None = None, attrs: str | None = None, drop: str | None = None) -> Path:
    """torchvision's CelebA layout with six real images; `partition` / `attrs` replace the list files."""
    base = root / "celeba"
    names = save_images(base / "img_align_celeba", [f"{i:06d}" for i in range(1, 7)])
    default_part = "".join(f"{n} {s}\n" for n, s in zip(names, [0, 0, 0, 1, 2, 2], strict=True))
    rows = "".join(f"{n} {1 if i % 2 else -1} -1\n" for i, n in enumerate(names))
    (base / "list_eval_partition.txt").write_text(default_part if partition is None else partition)
    (base / "list_attr_celeba.txt").write_text(f"6\nSmiling Young\n{rows}" if attrs is None else attrs)
    if drop:
        (base / "img_align_celeba" / drop).unlink()
    return root


def _indoor(root: Path, *, train: str | None = None, test: bytes | None = None) -> Path:
    rels = {c: [f"{c}/{n}" for n in save_images(root / "Images" / c, [f"{c}{i}" for i in range(4)])] for c in "ab"}
    (root / "TrainImages.txt").write_text("\n".join(rels["a"][:3] + rels["b"][:3]) if train is None else train)
    (root / "TestImages.txt").write_bytes(test if test is not None else f"{rels['a'][3]}\n{rels['b'][3]}\n".encode())
    return root


def _pretrain(run: Path, data_root: Path, *extra: str) -> list[str]:
    return [
        "pretrain",
        "--model",
        "mae_tiny",
        "--data-root",
        str(data_root),
        "--max-steps",
        "1",
        "--batch-size",
        "32",
        "--out",
        str(run),
        "--quiet",
        "--set",
        "train.val_max_images=8",
        *extra,
    ]


@pytest.fixture(scope="module")
def files(tmp_path_factory, fashion_small):
    d = tmp_path_factory.mktemp("data")
    f: dict[str, Path] = {"fm": fashion_small}
    f["ginr"] = make_checkpoint("ginr_tiny", d / "ginr" / "checkpoint.safetensors", data_root=fashion_small)
    f["ckpt_dir"] = f["ginr"].parent
    f["user_file"] = d / "notes.txt"
    f["user_file"].write_text("the user's own notes\n")
    f["pth"] = d / "mae_pretrain_vit_base.pth"
    torch.save({"model": {"w": torch.zeros(2)}}, f["pth"])
    # a finetune checkpoint where a pretraining run's checkpoint belongs
    c = load_checkpoint(f["ginr"])
    (d / "ftrun").mkdir()
    from safetensors.torch import save_file

    save_file(
        {f"model/{k}": v for k, v in c.model_state.items()},
        str(d / "ftrun" / "checkpoint.safetensors"),
        metadata={"format": FORMAT, "format_version": "2", "meta": json.dumps({**c.meta, "kind": "finetune"})},
    )
    f["ftrun"] = d / "ftrun"
    # image folders: two classes; one class; a flat folder of GIFs; a decompression bomb; NaN pixels
    f["two"] = d / "two"
    for cls in ("a", "b"):
        save_images(f["two"] / cls, [f"{cls}{i}" for i in range(6)], ".png")
    f["one"] = d / "one"
    save_images(f["one"] / "only", [f"x{i}" for i in range(8)], ".png")
    f["gifs"] = d / "gifs"
    save_images(f["gifs"], [f"g{i}" for i in range(4)], ".gif")
    f["bomb"] = d / "bomb"
    f["bomb"].mkdir()
    for i in range(4):
        (f["bomb"] / f"{i}.png").write_bytes(_png_declaring(30000, 30000))
    f["nan"] = d / "nan"
    for i in range(8):
        a = np.full((28, 28), 0.5, np.float32)
        a[3, 3] = np.nan
        (f["nan"] / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, mode="F").save(f["nan"] / "ab"[i % 2] / f"{i}.tiff")
    f["val_class"] = d / "val_class"  # val/ names a class that train/ lacks
    for split, classes in (("train", "ab"), ("val", "ac")):
        for cls in classes:
            save_images(f["val_class"] / split / cls, [f"{split}{cls}{i}" for i in range(3)], ".png")
    # Fashion-MNIST IDX files: 0 images; a label outside the 10 classes
    for name in ("idx_empty", "idx_label"):
        root = d / name
        shutil.copytree(fashion_small, root)
        if name == "idx_empty":
            write_idx(root / "train-images-idx3-ubyte.gz", np.zeros((0, 28, 28), np.uint8))
            write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(0, np.uint8))
        else:
            labels = read_idx(root / "train-labels-idx1-ubyte.gz")
            labels[5] = 12
            write_idx(root / "train-labels-idx1-ubyte.gz", labels)
        f[name] = root
    # CelebA and Indoor67 list files that are short, name unknown images or leave a split empty
    f["celeba_short"] = _celeba(d / "celeba_short", partition="000001.jpg\n")
    f["celeba_unknown"] = _celeba(d / "celeba_unknown", partition="000001.jpg 0\n999999.jpg 0\n000005.jpg 1\n")
    f["celeba_empty"] = _celeba(d / "celeba_empty", partition="")
    f["celeba_nosplit"] = _celeba(d / "celeba_nosplit", partition="000001.jpg 0\n000002.jpg 1\n")
    f["celeba_attr"] = _celeba(d / "celeba_attr", attrs="6\nSmiling Young\n000001.jpg 1\n")
    f["celeba_names"] = _celeba(d / "celeba_names", attrs="6\n")
    f["celeba_noimage"] = _celeba(d / "celeba_noimage", drop="000002.jpg")
    f["indoor_empty"] = _indoor(d / "indoor_empty", train="\n\n")
    f["indoor_missing"] = _indoor(d / "indoor_missing", train="a/a0.jpg\na/nothere.jpg\nb/b0.jpg\n")
    f["indoor_binary"] = _indoor(d / "indoor_binary", test=b"\xff\xfe\x00garbage")
    r = CliRunner().invoke(main, _pretrain(d / "run", fashion_small))
    assert r.exit_code == 0, r.output
    f["run"] = d / "run"
    f["big"] = d / "big.bin"  # for a seed above 2**64
    f["empty_file"] = d / "empty.safetensors"
    f["empty_file"].write_bytes(b"")
    return f


def _fill(args: list[str], files, tmp_path) -> list[str]:
    return [a.format(tmp=tmp_path, **{k: str(v) for k, v in files.items()}) for a in args]


def _one_line_exit_2(r, message: str) -> None:
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert message in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or `path` itself) with its bytes."""
    if path.is_file():
        return {str(path): path.read_bytes()}
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.name != LOCK_NAME) if path.exists() else []
    return {str(p): p.read_bytes() for p in found}


EXT = ["--cache-dir", "{tmp}/cache"]
PX = ["extract", "pixels", *EXT, "--quiet"]

# (command, message, paths that must survive unchanged, paths that must not exist afterwards)
