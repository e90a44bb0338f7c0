"""Configuration mistakes refused where they enter, and dry runs that refuse what the run would: each row a command
line and a fragment of its message; every one exits 2 with one line on stderr, nothing on stdout, no traceback.
A dry run writes nothing, its --out included."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from cli.main import main
from minr.checkpoint import FORMAT, load_checkpoint
from tests.conftest import make_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory, fashion_small):
    d = tmp_path_factory.mktemp("bad_cli")
    ginr = make_checkpoint("ginr_tiny", d / "ginr" / "checkpoint.safetensors", data_root=fashion_small)
    run = make_checkpoint("ginr_tiny", d / "run" / "checkpoint.safetensors", data_root=fashion_small).parent
    c = load_checkpoint(ginr)
    config = {**c.meta["config"], "train": {**c.meta["config"]["train"], "epochs": "many"}}
    bad_config = d / "bad_config.safetensors"
    save_file(
        {f"model/{k}": v for k, v in c.model_state.items()},
        str(bad_config),
        metadata={"format": FORMAT, "format_version": "2", "meta": json.dumps({**c.meta, "config": config})},
    )
    return {"fm": fashion_small, "ginr": ginr, "run": run, "bad_config": bad_config}


P = ["pretrain", "--model", "ginr_tiny", "--data-root", "{fm}", "--max-steps", "2", "--batch-size", "16", "--quiet"]
P += ["--out", "{tmp}/r"]
DRY = [*P, "--dry-run"]
B = ["bench", "--out", "{tmp}/b"]

ROWS = [
    # a section set as a whole: refused (it used to reset the section, dropping --max-steps, --batch-size, --device)
    ([*P, "--set", "train="], "--set train=: train is a section, not a value"),
    ([*P, "--set", "data=5"], "--set data=5: data is a section"),
    ([*P, "--set", "model_args="], "model_args is a section"),
    ([*P, "--set", "optim=adamw"], "(--set optim.name=...)"),
    ([*P, "--set", "mask=[4, 0.5]"], "merge a mapping into it (--set 'mask={kind: ...}')"),
    ([*B, "--set", "probe="], "--set probe=: probe is a section"),
    # declared types, named with the key, the expected type and the value
    ([*P, "--set", "train.max_steps=2.5"], "--set train.max_steps: expected an integer or null, got 2.5"),
    ([*P, "--set", "train.batch_size=[16]"], "--set train.batch_size: expected an integer, got [16]"),
    ([*P, "--set", "train.keep_checkpoints=5"], "--set train.keep_checkpoints: expected a list of integers, got 5"),
    ([*P, "--set", "optim.betas=0.9"], "--set optim.betas: expected a list of 2 numbers, got 0.9"),
    ([*P, "--set", "data.skip_bad_images=maybe"], "expected true or false, got 'maybe'"),
    ([*P, "--set", "data.name=null"], "--set data.name: expected a string, got null"),
    ([*P, "--set", "mask.ratio=half"], "--set mask.ratio: expected a number, got 'half'"),
    ([*P, "--set", "data.root.sub=1"], "data.root is a single value, not a section"),
    ([*B, "--set", "probe.seeds=two"], "--set probe.seeds: expected an integer, got 'two'"),
    ([*B, "--set", "probe.seedz=2"], "unknown config key 'probe.seedz'; the keys in probe are dataset"),
    (["extract", "{bad_config}", "--dataset", "digits"], "train.epochs: expected an integer"),
    # seeds: what torch and numpy take, 0 to 2^63-1
    ([*P, "--seed", "9223372036854775808"], "Invalid value for '--seed'"),
    ([*P, "--seed", "-1"], "Invalid value for '--seed'"),
    ([*P, "--set", "train.seed=9223372036854775808"], "--set train.seed: 9223372036854775808 is out of range"),
    ([*P, "--set", "train.seed=-1"], "train.seed must be in [0, 2^63-1], got -1"),
    (["reconstruct", "{ginr}", "--seed", "-5", "--out", "{tmp}/rc"], "Invalid value for '--seed'"),
    (["data", "make-fashion-scenes", "--out", "{tmp}/sc", "--seed", str(2**64)], "Invalid value for '--seed'"),
    # every section's values at their edges, each named with what is allowed
    ([*P, "--set", "data.val_fraction=1"], "data.val_fraction must be in (0, 1), got 1.0"),
    ([*P, "--set", "data.workers=-1"], "data.workers must be >= 0, got -1"),
    ([*P, "--set", "data.max_images=0"], "data.max_images must be positive, got 0"),
    ([*P, "--set", "optim.warmup_fraction=2"], "optim.warmup_fraction must be in [0, 1), got 2.0"),
    ([*P, "--set", "optim.decay_at=5"], "optim.decay_at must be in (0, 1], got 5.0"),
    ([*P, "--set", "optim.clip_grad=.nan"], "optim.clip_grad must be positive or null, got nan"),
    ([*P, "--set", "optim.lr=1e400"], "optim.lr must be a positive finite number, got inf"),
    ([*P, "--set", "train.ckpt_every=0"], "train.ckpt_every must be positive, got 0"),
    ([*P, "--set", "train.keep_checkpoints=[-1]"], "train.keep_checkpoints must be steps >= 0, got [-1]"),
    ([*P, "--set", "train.render_fraction=0"], "train.render_fraction must be in (0, 1], got 0.0"),
    ([*P, "--set", "mask.patch=-4"], "mask.patch must be positive, got -4"),
    # --dry-run refuses what the run refuses, before it starts
    ([*DRY, "--set", "model_args.depth=0"], "model_args.depth must be a positive integer"),
    ([*DRY, "--set", "mask.patch=5"], "mask.patch=5 does not divide the 28-px image"),
    ([*DRY, "--set", "model_args.bogus=1"], "does not accept these model_args"),
    ([*DRY, "--dataset", "imagefolder:{tmp}/nowhere"], "does not exist"),
    ([*DRY, "--data-root", "{tmp}/nowhere"], "no Fashion-MNIST there"),
    ([*DRY, "--batch-size", "5000"], "fewer than one batch of 5000"),
    ([*DRY, "--set", "train.render_fraction=0.5", "--model", "mae_tiny"], "renders none"),
    ([*DRY, "--out", "{run}"], "already holds a run (checkpoint.safetensors); pass --resume"),
    ([*DRY, "--out", "{run}", "--resume", "--set", "mask.ratio=0.5"], "with different settings"),
]
if not torch.cuda.is_available():
    ROWS.append(([*DRY, "--device", "cuda"], "--device cuda but no CUDA device is visible"))


@pytest.mark.parametrize("args, message", ROWS, ids=[f"{i:02d}-{r[0][0]}" for i, r in enumerate(ROWS)])
def test_config_mistakes_are_one_line_on_stderr_and_exit_2(args, message, files, tmp_path):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in files.items()}) for a in args]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert message in r.stderr and r.stdout == "", r.output
    assert "Traceback" not in r.output and len(r.stderr.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "r").exists()  # nothing written: no run folder, no lock


def test_dry_run_of_a_valid_config_checks_and_writes_nothing(files, tmp_path):
    """A dry run that passes prints the resolved config (a section merged as a mapping keeps the other options)
    and leaves --out uncreated; the same command without --dry-run then trains."""
    argv = [a.format(tmp=tmp_path, fm=files["fm"]) for a in P]
    r = CliRunner().invoke(main, [*argv, "--dry-run", "--set", "train={epochs: 2}", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert all(f"  {k}: {v}\n" in r.stdout for k, v in [("epochs", 2), ("max_steps", 2), ("batch_size", 16)])
    assert "device: cpu" in r.stdout and not (tmp_path / "r").exists()
