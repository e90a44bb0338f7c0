"""Hostile but realistic data and output paths: nothing of the user's is lost, nothing is silently wrong, and every
mistake is one line on stderr with exit code 2 (the style of test_bad_input.py).

Two tables: LOSS (the command is refused and the user's files survive, byte for byte) and BAD (damaged or
degenerate data, bad paths: one line, exit 2). The behaviour tests (stale caches, undefined PSNR, ...) are in
test_silent_results.py; the files both use in hostile_files.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import main
from minr.errors import MinrError
from minr.io import LOCK_NAME, locked_dir
from tests.hostile_files import EXT, PX, _fill, _one_line_exit_2, _snapshot

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
    (["reconstruct-grid", "{ginr}", "--mask-ratios", "0.5"], "No such option '--mask-ratios'"),
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
