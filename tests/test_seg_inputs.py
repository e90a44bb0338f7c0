"""Segmentation data and export, from a hostile user's side: malformed `seg:` folders refused before any training
(one line, exit 2), scene sets that are replaced whole or refused, unwritable destinations, the export command
run as a user runs it (a subprocess) for every family, and library warnings that minr's own calls must not print."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.main import main
from tests.conftest import ROOT, make_checkpoint

FAMILIES = ("ginr_tiny", "transinr_tiny", "mae_tiny")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {m: make_checkpoint(m, d / m / "checkpoint.safetensors") for m in FAMILIES}


def _seg_folder(root, *, size=(40, 36), n=3, classes=("bg", "a", "b")):
    """A valid `seg:` folder: n images per split of `size` (w, h), labels 0..2, and classes.json."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for sub in ("img_dir", "ann_dir"):
            (root / sub / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, size[::-1], dtype=np.uint8)).save(
                root / "img_dir" / split / f"{i}.png"
            )
            Image.fromarray(rng.integers(0, 3, size[::-1], dtype=np.uint8)).save(root / "ann_dir" / split / f"{i}.png")
    (root / "classes.json").write_text(json.dumps({"classes": list(classes)}))
    return root


def _cut(path):
    path.write_bytes(path.read_bytes()[:60])  # a PNG header and no pixels


def _bad_classes_json(root):
    (root / "classes.json").write_text("{not json")


def _no_classes_key(root):
    (root / "classes.json").write_text(json.dumps({"names": ["bg", "a"]}))


def _one_class(root):
    (root / "classes.json").write_text(json.dumps({"classes": ["bg"]}))


def _twice(root):
    (root / "classes.json").write_text(json.dumps({"classes": ["bg", "a", "a"]}))


def _corrupt_annotation(root):
    _cut(root / "ann_dir" / "val" / "2.png")


def _corrupt_image(root):
    _cut(root / "img_dir" / "val" / "1.png")


def _rgb_annotation(root):
    Image.fromarray(np.zeros((36, 40, 3), np.uint8)).save(root / "ann_dir" / "val" / "0.png")


def _mixed_suffixes(root):
    img = root / "img_dir" / "val" / "0.png"
    Image.open(img).convert("RGB").save(root / "img_dir" / "val" / "0.jpg")
    img.unlink()


def _not_an_image(root):
    (root / "img_dir" / "train" / "0.png").write_bytes(b"not a png at all")


SEG_CASES = [
    (_bad_classes_json, "classes.json is not valid JSON"),
    (_no_classes_key, 'needs a "classes" list'),
    (_one_class, "lists 1 class(es); segmentation needs at least 2"),
    (_twice, "lists class 'a' twice"),
    (_corrupt_annotation, "annotation"),
    (_corrupt_image, "image"),
    (_rgb_annotation, "labels must be one channel"),
    (_mixed_suffixes, "images of several suffixes"),
    (_not_an_image, "0.png cannot be read"),
]


@pytest.mark.parametrize("damage, message", SEG_CASES, ids=[f.__name__.strip("_") for f, _ in SEG_CASES])
def test_malformed_seg_data_is_refused_before_training(damage, message, ckpts, tmp_path):
    root = _seg_folder(tmp_path / "data")
    damage(root)
    out = tmp_path / "out"
    r = CliRunner().invoke(
        main,
        ["finetune", "--task", "segmentation", "--ckpt", str(ckpts["mae_tiny"]), "--dataset", f"seg:{root}"]
        + ["--max-steps", "1", "--batch-size", "2", "--out", str(out), "--quiet"],
    )
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not (out / "mae_tiny_tokens").exists()  # refused before any run folder or training


def test_scenes_over_an_existing_folder_replace_their_own_set_and_refuse_anything_else(fashion_small, tmp_path):
    runner = CliRunner()
    make = ["data", "make-fashion-scenes", "--data-root", str(fashion_small), "--n-val", "2"]
    out = tmp_path / "S"
    r = runner.invoke(main, [*make, "--out", str(out), "--n-train", "6", "--seed", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, [*make, "--out", str(out), "--n-train", "3", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (out / "img_dir" / "train").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (out / "ann_dir" / "train").iterdir()) == ["00000.png", "00001.png", "00002.png"]
    assert json.loads((out / "classes.json").read_text())["seed"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["S"]  # no temporary or old folder left beside it
    # a folder holding the user's own files is refused and left as it was
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = runner.invoke(main, [*make, "--out", str(mine), "--n-train", "3"])
    assert r.exit_code == 2 and "did not write" in r.output and "notes.txt" in r.output, r.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


@pytest.fixture
def unwritable(tmp_path):
    """A folder nobody may create anything in: a read-only one, or for root (who writes anywhere) /sys."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        yield locked
        locked.chmod(0o700)
        return
    try:
        (Path("/sys") / "minr-test").mkdir()
    except PermissionError:
        yield Path("/sys")
        return
    pytest.skip("no folder here refuses root")


@pytest.mark.parametrize("command", ["scenes", "timm"])
def test_unwritable_destination_is_one_line(command, ckpts, fashion_small, unwritable):
    if command == "scenes":
        args = ["data", "make-fashion-scenes", "--data-root", str(fashion_small), "--n-train", "2", "--n-val", "2"]
        args += ["--out", str(unwritable / "S")]
    else:
        args = ["export", str(ckpts["mae_tiny"]), "--to", "timm", "--out", str(unwritable / "e")]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2, r.output
    assert "permission denied" in r.output or "not permitted" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (unwritable / "S").exists() and not (unwritable / "e").exists()


def _cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_export_to_mmseg_from_the_command_line(name, ckpts, tmp_path):
    """The documented command, as a user runs it (a fresh process: nothing imported beforehand), for every family;
    the written config builds in mmseg and loads the written weights, and no library warning is printed."""
    r = _cli("export", str(ckpts[name]), "--to", "mmseg", "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr and "WARNING" not in r.stderr, r.stderr[-3000:]
    config = next((tmp_path / "e").glob("*_upernet_ade20k-512x512.py"))
    check = (
        "import finetune, torch\nfrom mmengine.config import Config\nfrom finetune.mmseg_config import build_model\n"
        f"cfg = Config.fromfile({str(config)!r})\nbb = cfg.model.backbone\n"
        "if bb.type == 'MAE': bb.img_size = (28, 28)\n"
        "m = build_model(cfg.model)\nm.backbone.init_weights()\n"
        f"w = torch.load({str(tmp_path / 'e' / 'backbone.pth')!r}, weights_only=True)\n"
        "assert set(w) == set(m.backbone.state_dict()), 'weights do not match the built backbone'\n"
        "assert cfg.model.test_cfg.mode == 'slide'\nprint('ok')"
    )
    r = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.slow
def test_scenes_of_an_odd_size_segment_without_library_noise(ckpts, fashion_small, tmp_path):
    """`make-fashion-scenes --size 29` then segmentation: 29 is no multiple of MAE's patch (4), so training and
    validation pad to it; every backbone kind runs, and stderr holds no warning from mmseg, mmcv or torch."""
    r = _cli(
        "data", "make-fashion-scenes", "--out", str(tmp_path / "sc"), "--size", "29", "--n-train", "8",
        "--n-val", "3", "--data-root", str(fashion_small),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    r = _cli(
        "finetune", "--task", "segmentation", "--ckpt", str(ckpts["ginr_tiny"]), "--ckpt", str(ckpts["mae_tiny"]),
        "--dataset", f"fashion-scenes:{tmp_path / 'sc'}", "--max-steps", "2", "--batch-size", "4",
        "--backbone", "tokens", "--backbone", "inr", "--backbone", "pixels", "--regime", "full",
        "--out", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Warning" not in r.stderr and "WARNING" not in r.stderr, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["name"] for e in res["entries"]] == ["ginr_tiny:tokens", "ginr_tiny:inr[3]", "mae_tiny:tokens", "pixels"]
    shutil.rmtree(tmp_path / "out")
