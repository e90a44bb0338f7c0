"""Nothing silently wrong: stale caches, resuming on other data, undefined PSNR, titles that name the measured
condition, paired counts of defined pairs only (the data of hostile_files.py)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from minr.config import DataConfig
from minr.data import load_split
from minr.metrics import mean_defined, psnr_protocols
from minr.sources import read_idx
from tests.conftest import make_checkpoint, save_images, write_idx
from tests.hostile_files import _one_line_exit_2, _pretrain, _snapshot


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
