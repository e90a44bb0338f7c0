"""Hostile but realistic data and output paths: nothing of the user's is lost, nothing is silently wrong, and every
mistake is one line on stderr with exit code 2 (the style of test_bad_input.py).

Three tables: LOSS (the command is refused and the user's files survive, byte for byte), BAD (damaged or
degenerate data, bad paths: one line, exit 2) and the behaviour tests after them (stale caches, resuming on other
data, undefined PSNR, titles that name the measured condition, the photos set at the model's resolution)."""

from __future__ import annotations

import json
import os
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
from minr.config import DataConfig
from minr.data import load_split
from minr.errors import MinrError
from minr.io import LOCK_NAME, locked_dir
from minr.metrics import mean_defined, psnr_protocols
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
LOSS = [
    (["import-mae", "{pth}", "--out", "{pth}"], "is also an input", ["{pth}"], []),
    (["pretrain", "--model", "mae_tiny", "--data-root", "{fm}", "--out", ""], "--out is empty", ["{tmp}"], []),
    (["probe", "--ckpt", "{ginr}", "--dataset", "digits", *EXT, "--out", ""], "--out is empty", ["{tmp}"], []),
    (["finetune", "--task", "classification", "--ckpt", "{ginr}", "--out", ""], "--out is empty", ["{tmp}"], []),
    (["reconstruct", "{ginr}", "--out", ""], "--out is empty", ["{tmp}", "{ckpt_dir}"], []),
    (["extract", "pixels", "--dataset", "digits", "--cache-dir", ""], "--cache-dir is empty", ["{tmp}"], []),
    (["compare", "{run}", "--out", "{run}/summary.json"], "is also an input", ["{run}"], []),
    (["compare", "{run}", "--out", "{run}/checkpoint.safetensors"], "is also an input", ["{run}"], []),
    (["compare", "{run}", "--out", "{run}/config.yaml"], "is also an input", ["{run}"], []),
    (["reconstruct", "{ginr}", "--out", "{ginr}"], "is also an input", ["{ginr}"], []),
    (["reconstruct-grid", "{ginr}", "--out", "{ginr}.png"], "", ["{ckpt_dir}/checkpoint.safetensors"], []),
    (
        ["pretrain", "--model", "mae_tiny", "--dataset", "imagefolder:{two}", "--out", "{two}/run"],
        "an input folder of this command (a dataset)",
        ["{two}"],
        ["{two}/run"],
    ),
    (
        ["reconstruct", "{ginr}", "--dataset", "imagefolder:{two}", "--out", "{two}"],
        "is also an input",
        ["{two}"],
        [],
    ),
    (
        ["extract", "pixels", "--dataset", "imagefolder:{two}", "--cache-dir", "{two}/cache"],
        "an input folder of this command (a dataset)",
        ["{two}"],
        ["{two}/cache"],
    ),
    (
        ["probe", "--ckpt", "{ginr}", "--dataset", "imagefolder:{two}", *EXT, "--out", "{two}/a/probe"],
        "an input folder of this command (a dataset)",
        ["{two}"],
        ["{two}/a/probe"],
    ),
    (["reconstruct", "{ginr}", "--out", "{user_file}"], "is a file, not a folder", ["{user_file}"], []),
    (["export", "{ginr}", "--to", "mmseg", "--out", ""], "--out is empty", ["{tmp}"], []),
    (["export", "{ginr}", "--to", "mmseg", "--out", "{ginr}"], "is a file", ["{ginr}"], []),
    (["data", "make-fashion-scenes", "--out", "", "--n-train", "1", "--n-val", "1"], "--out is empty", ["{tmp}"], []),
    (
        ["finetune", "--task", "segmentation", "--ckpt", "{ginr}", "--dataset", "seg:{two}", "--out", "{two}/seg"],
        "an input folder of this command",
        ["{two}"],
        ["{two}/seg"],
    ),
    (["pretrain", "--model", "mae_tiny", "--out", "{user_file}/run"], "is a file, so nothing", ["{user_file}"], []),
    (
        ["data", "make-fashion-scenes", "--data-root", "{fm}", "--n-train", "2", "--n-val", "2", "--out", "{fm}"],
        "which make-fashion-scenes did not write",
        ["{fm}"],
        [],
    ),
    (["bench", "--out", "{two}", "--stages", "report"], "and no bench record", ["{two}"], []),
    (["bench", "--out", "{run}", "--dry-run"], "and no bench record", ["{run}"], []),
    # a command that fails early leaves no folder behind, and only what it created goes
    (
        ["pretrain", "--model", "ginr_tiny", "--dataset", "imagefolder:{gifs}", "--out", "{tmp}/new/run"],
        "no images found",
        [],
        ["{tmp}/new"],
    ),
    (
        ["pretrain", "--model", "ginr_tiny", "--set", "mask.patch=5", "--data-root", "{fm}", "--out", "{tmp}/a/b/c"],
        "does not divide",
        [],
        ["{tmp}/a"],
    ),
    (
        [
            "finetune",
            "--task",
            "classification",
            "--ckpt",
            "{ginr}",
            "--dataset",
            "imagefolder:{one}",
            "--out",
            "{tmp}/ft",
        ],
        "of one class ('only'); a classifier needs images of at least two classes",
        [],
        ["{tmp}/ft"],
    ),
    (
        ["probe", "--ckpt", "{ginr}", "--dataset", "imagefolder:{nan}", *EXT, "--out", "{tmp}/p", "--quiet"],
        "NaN or infinite",
        [],
        ["{tmp}/p"],
    ),
    (
        ["reconstruct", "{ginr}", "--dataset", "imagefolder:{bomb}", "--out", "{tmp}/rc", "--quiet"],
        "declares 30000x30000 pixels",
        [],
        ["{tmp}/rc"],
    ),
    (
        ["pretrain", "--model", "mae_tiny", "--data-root", "{fm}", "--out", "{ftrun}", "--resume"],
        "is a finetune checkpoint",
        ["{ftrun}"],
        ["{ftrun}/" + LOCK_NAME],
    ),
]


@pytest.mark.parametrize("args, message, keep, gone", LOSS, ids=[f"{i:02d}-{r[0][0]}" for i, r in enumerate(LOSS)])
def test_refused_outputs_lose_nothing(args, message, keep, gone, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty --out would otherwise mean this folder
    before = {p: _snapshot(Path(p)) for p in _fill(keep, files, tmp_path)}
    r = CliRunner().invoke(main, _fill(args, files, tmp_path))
    if message:
        _one_line_exit_2(r, message)
    else:  # `--out CKPT.png` is a new file beside the checkpoint: allowed, and the checkpoint is untouched
        assert r.exit_code == 0, r.output
    assert {p: _snapshot(Path(p)) for p in before} == before
    for p in _fill(gone, files, tmp_path):
        assert not Path(p).exists(), p


def test_a_failed_download_leaves_the_data_root_as_it_was(tmp_path, monkeypatch):
    """An unreachable mirror: the download fails, and neither FashionMNIST/raw/ nor a partial file is left in the
    user's --data-root; what was there before (a file, an older FashionMNIST/ folder with a note) stays."""
    from torchvision.datasets import FashionMNIST

    monkeypatch.delenv("MINR_OFFLINE", raising=False)
    monkeypatch.setattr(FashionMNIST, "mirrors", ["http://127.0.0.1:9/"])  # nothing listens on port 9
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    fresh.mkdir()
    (old / "FashionMNIST").mkdir(parents=True)
    (old / "FashionMNIST" / "README").write_text("mine")
    for root in (fresh, old):
        before = sorted(root.rglob("*"))
        args = ["pretrain", "--model", "ginr_tiny", "--data-root", str(root), "--out", str(tmp_path / "r")]
        r = CliRunner().invoke(main, args)
        _one_line_exit_2(r, "no Fashion-MNIST there")
        assert sorted(root.rglob("*")) == before


def test_locked_dir_removes_only_what_a_failed_block_created(tmp_path):
    with pytest.raises(MinrError), locked_dir(tmp_path / "x" / "y"), locked_dir(tmp_path / "x" / "y" / "seed0"):
        raise MinrError("fails before writing")
    assert not (tmp_path / "x").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("keep")
    with pytest.raises(MinrError), locked_dir(kept):
        raise MinrError("fails")
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]
    with pytest.raises(MinrError), locked_dir(tmp_path / "wrote") as out:
        (out / "config.yaml").write_text("a record of the run")
        raise MinrError("fails after writing")
    assert (tmp_path / "wrote" / "config.yaml").exists()  # what a run wrote stays (a resumable run keeps its files)


BAD = [
    # seeds torch and numpy cannot take
    (["pretrain", "--model", "mae_tiny", "--seed", str(2**64), "--out", "{tmp}/r"], "Invalid value for '--seed'"),
    (["reconstruct", "{ginr}", "--seed", "-1"], "Invalid value for '--seed'"),
    (["data", "make-fashion-scenes", "--out", "{tmp}/s", "--seed", str(2**64)], "Invalid value for '--seed'"),
    # images: a decompression bomb, NaN pixels, formats that are not read
    ([*PX, "--dataset", "imagefolder:{bomb}"], "declares 30000x30000 pixels"),
    ([*PX, "--dataset", "imagefolder:{nan}"], "holds NaN or infinite pixel values"),
    (
        [*PX, "--dataset", "imagefolder:{gifs}"],
        "one of .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp (it holds 4 .gif",
    ),
    ([*PX, "--dataset", "imagefolder:{user_file}"], "is a file, not a folder"),
    # Fashion-MNIST IDX files
    ([*PX, "--data-root", "{idx_empty}"], "hold 0 images"),
    ([*PX, "--data-root", "{idx_label}"], "has label 12 but 10 classes"),
    # CelebA and Indoor67 lists
    ([*PX, "--dataset", "celeba:{celeba_short}"], "line 1 is '000001.jpg'; expected `<image> <0|1|2>`"),
    ([*PX, "--dataset", "celeba:{celeba_unknown}"], "999999.jpg is in list_eval_partition.txt but not in"),
    ([*PX, "--dataset", "celeba:{celeba_empty}"], "list_eval_partition.txt lists no images"),
    ([*PX, "--dataset", "celeba:{celeba_nosplit}"], "puts no image in the test split"),
    ([*PX, "--dataset", "celeba:{celeba_attr}"], "line 3 is not `<image>` and 2 values of 1 or -1"),
    ([*PX, "--dataset", "celeba:{celeba_names}"], "has no attribute names"),
    ([*PX, "--dataset", "celeba:{celeba_noimage}"], "1 image(s) listed in list_eval_partition.txt are not in"),
    ([*PX, "--dataset", "indoor67:{indoor_empty}"], "TrainImages.txt lists no images"),
    ([*PX, "--dataset", "indoor67:{indoor_missing}"], "lists 1 image(s) that are not in"),
    ([*PX, "--dataset", "indoor67:{indoor_binary}"], "TestImages.txt (UnicodeDecodeError); is it a text file?"),
    # degenerate data for classifiers: one class, one image, splits that disagree on the classes
    (["probe", "--ckpt", "{ginr}", "--dataset", "imagefolder:{one}", *EXT, "--out", "{tmp}/p"], "of one class"),
    (["probe", "--ckpt", "{ginr}", "--dataset", "digits", "--max-images", "1", *EXT, "--out", "{tmp}/p"], "1 image"),
    ([*PX, "--dataset", "imagefolder:{val_class}"], "has class folder 'c', which the train split lacks"),
    # reconstruction at a size no memory holds
    (["reconstruct-grid", "{ginr}", "--scale", "1000", "--out", "{tmp}/g.png"], "--scale 1000 renders 40 tiles"),
    (["reconstruct", "{ginr}", "--scale", "1000", "--out", "{tmp}/rc"], "--scale 1000 renders"),
    # exact-count masks below half a cell would mask one cell, many times the ratio the tables name
    (
        ["reconstruct", "{ginr}", "--dataset", "digits", "--mask-kinds", "random", "--mask-ratios", "0.001"]
        + ["--out", "{tmp}/rc"],
        "0.049 of a cell rounds up to one (2.0% masked, not 0.1%)",
    ),
    # the single grid is its own command, with the run's own masks and data: evaluation options are not its own
    (["reconstruct-grid", "{ginr}", "--mask-ratios", "0.5"], "No such option: --mask-ratios"),
    (["reconstruct", "{ginr}", "--dataset", "digits", "--out", "{tmp}/g.png"], "is an image path"),
    # what a checkpoint path is when it is not a checkpoint
    (["inspect", "{ckpt_dir}"], "is a folder, not a file; it holds checkpoint.safetensors"),
    (["inspect", "/dev/zero"], "/dev/zero is not a regular file"),
    (["inspect", "{empty_file}"], "header too small); was it truncated?"),
    (["probe", "--ckpt", "{ckpt_dir}", "--dataset", "digits", *EXT, "--out", "{tmp}/p"], "is a folder, not a file"),
    (["import-mae", "/dev/zero", "--out", "{tmp}/m.safetensors"], "is not a regular file"),
    (["import-mae", "{tmp}", "--out", "{tmp}/m.safetensors"], "is a folder, not a file"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[f"{i:02d}-{r[0][0]}" for i, r in enumerate(BAD)])
def test_bad_data_is_one_line_and_exit_2(args, message, files, tmp_path):
    _one_line_exit_2(CliRunner().invoke(main, _fill(args, files, tmp_path)), message)


def test_bad_image_is_skipped_with_skip_bad_images(files, tmp_path):
    """A decompression bomb and NaN pixels are unreadable images like any other: --skip-bad-images skips them."""
    mixed = tmp_path / "mixed"
    save_images(mixed, [f"ok{i}" for i in range(6)], ".png")
    shutil.copy(files["bomb"] / "0.png", mixed / "bomb.png")
    shutil.copy(files["nan"] / "a" / "0.tiff", mixed / "nan.tiff")
    cfg = DataConfig(name=f"imagefolder:{mixed}", skip_bad_images=True)
    with pytest.warns(UserWarning, match="skipping"):
        splits = [load_split(cfg, s, image_size=28, in_chans=1) for s in ("train", "val", "test")]
    assert sum(len(s) for s in splits) == 6


# -- silently wrong results ------------------------------------------------------------------------------------
def test_replaced_images_are_not_served_from_the_feature_cache(files, tmp_path):
    """The split's fingerprint holds each file's size and mtime: an image replaced under the same name is a cache
    miss with the new features; an untouched folder is a hit."""
    folder = tmp_path / "d"
    shutil.copytree(files["two"], folder)
    args = ["extract", "pixels", "--dataset", f"imagefolder:{folder}", "--cache-dir", str(tmp_path / "c"), "--quiet"]
    spec_out = []
    for _ in range(2):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        spec_out.append(r.output)
    assert "cache hit" not in spec_out[0] and "cache hit" in spec_out[1]
    from probes.extract import ExtractSpec, extract

    spec = ExtractSpec(ckpt="pixels", data=DataConfig(name=f"imagefolder:{folder}"))
    old = extract(spec, tmp_path / "c", progress=False, log=lambda _: None)
    assert old.cached
    for p in sorted(folder.rglob("*.png")):  # new content under the same names, an older mtime even
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(p)
        os.utime(p, ns=(10**18, 10**18))
    new = extract(spec, tmp_path / "c", progress=False, log=lambda _: None)
    assert not new.cached and new.features.abs().sum() == 0 and old.features.abs().sum() > 0


def test_resume_on_other_images_is_refused_but_a_moved_copy_resumes(files, tmp_path):
    """data.root may change on --resume (the data moved), but the images must be the run's: their fingerprint is
    checked, not the path."""
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    moved, other = tmp_path / "moved", tmp_path / "other"
    shutil.copytree(files["fm"], moved)
    shutil.copytree(files["fm"], other)
    images = read_idx(other / "train-images-idx3-ubyte.gz")
    write_idx(other / "train-images-idx3-ubyte.gz", 255 - images)  # same labels and count, other pixels
    before = _snapshot(run)
    r = CliRunner().invoke(main, _pretrain(run, other, "--resume"))
    _one_line_exit_2(r, "the train data differ from the run's")
    assert _snapshot(run) == before
    r = CliRunner().invoke(main, _pretrain(run, moved, "--resume"))
    assert r.exit_code == 0, r.output


def test_psnr_is_undefined_without_a_masked_pixel():
    target = torch.zeros(2, 1, 2, 2)
    recon = torch.full((2, 1, 2, 2), 0.1)
    mask = torch.zeros(2, 1, 2, 2, dtype=torch.bool)
    mask[1, 0, 0, 0] = True  # image 0: nothing masked; image 1: one pixel
    got = psnr_protocols(recon, target, mask)
    assert torch.isnan(got["masked"][0]) and torch.isnan(got["pasted"][0]) and torch.isfinite(got["full"]).all()
    assert got["masked"][1].item() == pytest.approx(20.0) and got["pasted"][1].item() == pytest.approx(
        20 + 10 * np.log10(4)
    )
    assert mean_defined(got["masked"]) == (pytest.approx(20.0), 1)
    mean, left_out = mean_defined(torch.tensor([float("nan")]))
    assert np.isnan(mean) and left_out == 1


def test_reconstruct_with_nearly_no_mask_reports_no_100_db_and_names_the_condition(files, tmp_path):
    """1% Bernoulli masks leave most images unmasked: those are left out of masked / pasted PSNR and counted;
    every title names the condition measured (1% bernoulli), never "75% random"."""
    out = tmp_path / "rc"
    args = ["reconstruct", str(files["ginr"]), "--data-root", str(files["fm"]), "--mask-kinds", "bernoulli"]
    args += ["--mask-ratios", "0.01", "--max-images", "24", "--num-images", "2", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "results.json").read_text())
    cells = [c for e in res["entries"] for c in e["cells"] if c["protocol"] in ("masked", "pasted")]
    assert cells and all(c["undefined"] > 0 and c["n"] + c["undefined"] == 24 for c in cells)
    assert all(c["mean"] is None or c["mean"] < 60 for c in cells)
    md = (out / "results.md").read_text()
    assert "1% bernoulli masking" in md and "75%" not in md and "unmasked left out" in md


def test_reconstruct_tables_say_the_ratio_they_measured(files, tmp_path):
    out = tmp_path / "rc"
    args = ["reconstruct", str(files["ginr"]), "--data-root", str(files["fm"]), "--mask-kinds", "random"]
    args += ["--mask-ratios", "0.5", "--max-images", "8", "--num-images", "2", "--no-floors", "--out", str(out)]
    r = CliRunner().invoke(main, [*args, "--quiet"])
    assert r.exit_code == 0, r.output
    md = (out / "results.md").read_text()
    assert "50% random masking" in md and "75%" not in md and "50% random masking" in r.output


def test_validation_psnr_leaves_out_unmasked_images(files, tmp_path):
    """A 2.5% Bernoulli training mask: the validation images without a masked pixel are counted, not scored at
    100 dB in masked / pasted PSNR."""
    run = tmp_path / "run"
    args = [
        "pretrain",
        "--model",
        "ginr_tiny",
        "--data-root",
        str(files["fm"]),
        "--max-steps",
        "1",
        "--batch-size",
        "16",
        "--set",
        "mask.kind=bernoulli",
        "--set",
        "mask.ratio=0.025",  # the smallest ratios are refused; at this one about 29% of images have no masked cell
        "--set",
        "train.val_max_images=16",
        "--out",
        str(run),
        "--quiet",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_unmasked"] >= 1 and summary["psnr_full"] < 60
    assert summary["psnr_masked"] is None or summary["psnr_masked"] < 60
    val = [ln for ln in (run / "metrics.csv").read_text().splitlines() if ln.startswith("val,")]
    assert val and f",{summary['val_unmasked']}," in val[-1]


def test_every_split_uses_the_train_splits_class_indices(tmp_path):
    """A val/ folder with fewer classes than train/ keeps train's label numbers (before, val's own sorted list made
    label 0 mean another class there); hidden folders are not classes."""
    for split, classes in (("train", "abc"), ("val", "c")):
        for cls in classes:
            save_images(tmp_path / split / cls, [f"{split}{cls}{i}" for i in range(4)], ".png")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    cfg = DataConfig(name=f"imagefolder:{tmp_path}")
    train = load_split(cfg, "train", image_size=28, in_chans=1)
    test = load_split(cfg, "test", image_size=28, in_chans=1)
    assert train.classes == test.classes == ("a", "b", "c")
    assert set(test.source.labels.tolist()) == {2}


def test_paired_counts_only_defined_pairs_and_the_bench_headline_is_the_measured_condition(files, tmp_path):
    """At a 2% Bernoulli mask most images have no masked pixel: a paired MINR - MAE comparison rests on the images
    where both PSNRs are defined (n) and counts the others (excluded), and the tables say so. The bench's headline
    and verdict read the reconstruct stage's own condition: with ratios 0.02 and 0.5, 50% random, never a
    hard-coded 75% that this run did not measure."""
    from cli.bench.config import load_preset
    from cli.bench.results import BenchResults
    from cli.bench.stages import ProbeOutcome
    from cli.bench.verdict import headline_mask, headline_pairs
    from minr.typed import from_plain
    from probes.recon.report import ReconResults

    mae = make_checkpoint("mae_tiny", tmp_path / "mae_tiny" / "checkpoint.safetensors", data_root=files["fm"])
    ginr = tmp_path / "ginr_tiny" / "checkpoint.safetensors"
    shutil.copytree(files["ckpt_dir"], ginr.parent)
    out = tmp_path / "rc"
    args = ["reconstruct", str(ginr), str(mae), "--data-root", str(files["fm"]), "--mask-kinds", "random,bernoulli"]
    args += ["--mask-ratios", "0.02,0.5", "--max-images", "24", "--no-floors", "--out", str(out), "--quiet"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    recon = from_plain(ReconResults, json.loads((out / "results.json").read_text()), "results.json")
    sparse = [c.comparison for c in recon.paired if (c.kind, c.ratio, c.protocol) == ("bernoulli", 0.02, "masked")]
    assert sparse and all(p.excluded > 0 and p.n + p.excluded == 24 for p in sparse)
    dense = [c.comparison for c in recon.paired if (c.kind, c.ratio) == ("random", 0.5)]
    assert dense and all(p.excluded == 0 and p.n == 24 for p in dense)
    assert f"{sparse[0].n} ({sparse[0].excluded} undefined)" in (out / "results.md").read_text()
    cfg = load_preset("quick", models=("ginr_tiny", "mae_tiny"))
    res = BenchResults(cfg, {}, {}, {}, recon, ProbeOutcome(None, None), None, {}, "test", {})
    assert headline_mask(recon) == ("random", 0.5)
    pairs = headline_pairs(res)
    assert pairs and all("50% random" in c.what for c in pairs), [c.what for c in pairs]
