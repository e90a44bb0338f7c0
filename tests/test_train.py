import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from minr.build import default_config
from minr.checkpoint import load_checkpoint, weights_sha256
from minr.errors import MinrError
from minr.loop import lr_factor
from minr.runtime import epoch_batches
from minr.train import pretrain
from tests.conftest import ROOT, kill_mid_run, killed_after_first_checkpoint


def test_lr_schedules():
    def f(step, schedule, **kw):
        return lr_factor(step, 100, schedule=schedule, **kw)

    assert f(79, "step", decay_at=0.8) == 1.0 and f(80, "step", decay_at=0.8) == pytest.approx(0.1)
    assert f(0, "cosine", warmup_fraction=0.1) == pytest.approx(0.1) and f(9, "cosine", warmup_fraction=0.1) == 1.0
    assert f(10, "cosine", warmup_fraction=0.1) == 1.0 and f(99, "cosine", warmup_fraction=0.1) < 0.01
    assert f(55, "constant") == 1.0
    assert f(10, "poly", warmup_fraction=0.1) == 1.0 and f(55, "poly", warmup_fraction=0.1) == pytest.approx(0.5)


def test_epoch_batches_are_keyed_and_full():
    a = epoch_batches(10, 3, epoch=0, seed=1)
    assert len(a) == 3 and all(len(b) == 3 for b in a) and len({i for b in a for i in b}) == 9
    assert a == epoch_batches(10, 3, epoch=0, seed=1) != epoch_batches(10, 3, epoch=1, seed=1)


def _cfg(name, root, **extra):
    over = {
        "data.root": str(root),
        "train.batch_size": 32,
        "train.max_steps": 6,
        "train.val_max_images": 32,
        "train.ckpt_every": 2,
        **extra,
    }
    return default_config(name, over)


@pytest.mark.parametrize("name", ["ginr_tiny", "transinr_tiny", "mae_tiny"])
def test_pretrain_writes_a_self_describing_run(name, fashion_small, tmp_path):
    torch.manual_seed(0)
    summary = pretrain(_cfg(name, fashion_small), tmp_path, progress=False)
    assert summary["steps"] == 6 and summary["psnr_pasted"] > summary["psnr_full"] - 5
    ckpt = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert ckpt.meta["model"] == name and ckpt.meta["step"] == 6 and ckpt.meta["config"]["train"]["max_steps"] == 6
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len([r for r in rows if r.startswith("train,")]) == 6 and any(r.startswith("val,") for r in rows)
    assert "git_sha" in (tmp_path / "config.yaml").read_text()
    first = json.loads((tmp_path / "summary.json").read_text())
    assert first["train_images_per_s"] > 0 and first["train_seconds"] > 0
    # a finished run entered again (as the bench does) trains nothing and keeps the run's throughput
    again = pretrain(_cfg(name, fashion_small), tmp_path, resume=True, progress=False)
    assert again["images_seen_this_session"] == 0 and again["psnr_full"] == summary["psnr_full"]
    assert again["train_images_per_s"] == first["train_images_per_s"]


def test_training_lowers_the_loss(fashion_small, tmp_path):
    torch.manual_seed(0)
    pretrain(_cfg("transinr_tiny", fashion_small, **{"train.max_steps": 30}), tmp_path, progress=False)
    rows = [r.split(",") for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:] if r.startswith("train")]
    first, last = float(rows[0][3]), sum(float(r[3]) for r in rows[-5:]) / 5
    assert last < 0.7 * first


def test_refuses_to_overwrite_or_resume_with_other_config(fashion_small, tmp_path):
    pretrain(_cfg("mae_tiny", fashion_small), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    with pytest.raises(MinrError, match="--resume"):
        pretrain(_cfg("mae_tiny", fashion_small), tmp_path, progress=False)
    with pytest.raises(MinrError, match="mask.ratio"):
        pretrain(_cfg("mae_tiny", fashion_small, **{"mask.ratio": 0.5}), tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
    again = pretrain(_cfg("mae_tiny", fashion_small), tmp_path, resume=True, progress=False)  # already finished
    assert again["steps"] == 6 and "psnr_masked" in again
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == before


def _cli(*args, env=None):
    return [sys.executable, "-m", "cli.main", *args]


def _pretrain_args(root, out, steps=12):
    return [
        "pretrain",
        "--model",
        "ginr_tiny",
        "--data-root",
        str(root),
        "--max-steps",
        str(steps),
        "--out",
        str(out),
        "--batch-size",
        "32",
        "--quiet",
        "--set",
        "train.ckpt_every=3",
        "--set",
        "train.val_max_images=32",
    ]


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(fashion_small, tmp_path):
    """GINR (with dropout) killed mid-run and resumed ends with the very weights of a run never stopped."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli(*_pretrain_args(fashion_small, tmp_path / "a")), cwd=ROOT, env=env, check=True)
    proc = subprocess.Popen(_cli(*_pretrain_args(fashion_small, tmp_path / "b")), cwd=ROOT, env=env)
    killed_at = kill_mid_run(proc, tmp_path / "b" / "checkpoint.safetensors", lambda: proc.send_signal(signal.SIGKILL))
    assert killed_at < 12, "the run finished before it could be killed"
    subprocess.run(_cli(*_pretrain_args(fashion_small, tmp_path / "b"), "--resume"), cwd=ROOT, env=env, check=True)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.safetensors") for d in "ab")
    assert b.meta["step"] == 12
    assert weights_sha256(a.model_state) == weights_sha256(b.model_state)
    steps = [
        int(r.split(",")[1])
        for r in (tmp_path / "b" / "metrics.csv").read_text().splitlines()[1:]
        if r.startswith("train")
    ]
    assert steps == list(range(1, 13))


def _losses(path):
    return [float(r.split(",")[3]) for r in path.read_text().splitlines()[1:] if r.startswith("train")]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(fashion_small, tmp_path):
    """torchrun with 2 gloo processes at the same global batch gives the single-process losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        "pretrain",
        "--model",
        "transinr_tiny",
        "--data-root",
        str(fashion_small),
        "--max-steps",
        "4",
        "--batch-size",
        "32",
        "--quiet",
        "--set",
        "train.val_max_images=32",
    ]
    subprocess.run(_cli(*args, "--out", str(tmp_path / "one")), cwd=ROOT, env=env, check=True)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "cli.main",
    ]
    subprocess.run([*torchrun, *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env, check=True)
    one, two = _losses(tmp_path / "one" / "metrics.csv"), _losses(tmp_path / "two" / "metrics.csv")
    assert len(one) == len(two) == 4
    assert one == pytest.approx(two, rel=1e-4)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["world_size"] == 2


def test_tensorboard_log(fashion_small, tmp_path):
    pretrain(
        _cfg("mae_tiny", fashion_small, **{"train.log": "tensorboard", "train.max_steps": 2}), tmp_path, progress=False
    )
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_render_a_random_pixel_subset(fashion_small, tmp_path):
    """train.render_fraction < 1 renders part of the pixels per step (MINR); validation still renders all."""
    s = pretrain(
        _cfg("ginr_tiny", fashion_small, **{"train.render_fraction": 0.25, "train.max_steps": 3}),
        tmp_path,
        progress=False,
    )
    rows = [r.split(",") for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:] if r.startswith("train")]
    assert len(rows) == 3 and all(r[5] == "" and float(r[3]) > 0 for r in rows)  # no full-image PSNR in training
    assert s["psnr_full"] > 0


def test_masks_are_drawn_anew_each_epoch_and_the_first_epoch_keeps_its_own():
    """An image seen in a later epoch gets a new mask (as MAE draws them); epoch 0's masks are the run's
    original ones, and a step's masks depend only on (seed, epoch, image), so a resumed run draws the same."""
    from types import SimpleNamespace

    from minr import masking
    from minr.train import masked_step

    cfg = default_config("mae_tiny")
    seen = []

    def net(images, mask, patch, **extra):
        seen.append(mask.clone())
        return SimpleNamespace(loss=images.sum(), recon=None)

    step = masked_step(cfg, net, 28, torch.device("cpu"), per_epoch=5)
    batch = (torch.zeros(3, 1, 28, 28), None, torch.tensor([7, 8, 9]))
    for s in (0, 4, 5, 12, 5):
        step(batch, s)
    first = masking.make_masks([7, 8, 9], cfg.mask, 28, seed=cfg.train.seed, salt="train")
    assert torch.equal(seen[0], first) and torch.equal(seen[1], first)  # epoch 0, twice
    assert not torch.equal(seen[2], first) and not torch.equal(seen[3], seen[2])  # epochs 1 and 2: new masks
    assert torch.equal(seen[4], seen[2])  # the same epoch again: the same masks
    assert all(int(m.sum()) == int(first.sum()) for m in seen)  # every draw masks the same share


@pytest.mark.slow
def test_compiled_steps_give_the_eager_losses_and_resume_an_eager_run(fashion_small, tmp_path, monkeypatch):
    """`train.compile` (torch.compile, CPU inductor): a run stopped after 2 eager steps and resumed compiled takes
    the steps an all-eager run takes (losses to 1e-4; TransINR has no dropout, whose random streams differ once
    compiled), and its checkpoint keeps the eager weights' names."""
    over = {"data.root": str(fashion_small), "train.batch_size": 32, "train.val_max_images": 32}
    over |= {"train.ckpt_every": 2, "train.max_steps": 4}
    pretrain(default_config("transinr_tiny", over), tmp_path / "eager", progress=False)
    with killed_after_first_checkpoint(monkeypatch):
        pretrain(default_config("transinr_tiny", over), tmp_path / "b", progress=False)
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    resumed = pretrain(default_config("transinr_tiny", {**over, "train.compile": True}), tmp_path / "b", resume=True)
    assert resumed["steps"] == 4 and counters["stats"]["unique_graphs"] > graphs  # it did compile
    eager, mixed = (_losses(tmp_path / d / "metrics.csv") for d in ("eager", "b"))
    assert len(eager) == len(mixed) == 4 and mixed == pytest.approx(eager, rel=1e-4)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.safetensors").model_state for d in ("eager", "b"))
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
