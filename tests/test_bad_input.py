"""Every user mistake is one line on stderr and exit code 2, with no traceback: a table of bad inputs across every
command, each row a command line and a fragment of the message it must print."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file, save_file

from cli.main import main
from minr.checkpoint import FORMAT, load_checkpoint
from tests.conftest import make_checkpoint, write_idx
from tests.hostile_files import _pretrain


def _rewrite(src, dst, *, meta=None, tensors=None, raw_meta=None, version=None):
    """A copy of checkpoint `src` with its metadata or tensors changed."""
    c = load_checkpoint(src)
    t = {f"model/{k}": v for k, v in (tensors or c.model_state).items()}
    m = json.dumps({**c.meta, **(meta or {})}) if raw_meta is None else raw_meta
    save_file(t, str(dst), metadata={"format": FORMAT, "format_version": version or "2", "meta": m})
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory, fashion_small):
    d = tmp_path_factory.mktemp("bad")
    ginr = make_checkpoint("ginr_tiny", d / "ginr" / "checkpoint.safetensors", data_root=fashion_small)
    mae = make_checkpoint("mae_tiny", d / "mae" / "checkpoint.safetensors", data_root=fashion_small)
    state = load_checkpoint(ginr).model_state
    f = {"ginr": ginr, "mae": mae, "fm": fashion_small, "missing": d / "missing", "empty": d / "empty"}
    f["empty"].mkdir()
    torch.save({"w": torch.zeros(2)}, d / "weights.pt")
    f["pickle"] = d / "weights.pt"
    f["other_model"] = _rewrite(
        ginr,
        d / "other.safetensors",
        meta={"model": "transinr_tiny", "config": {**load_checkpoint(ginr).meta["config"], "model": "transinr_tiny"}},
    )
    f["wrong_shape"] = _rewrite(ginr, d / "shape.safetensors", tensors={**state, "pos_embed": torch.zeros(1, 5, 128)})
    f["bad_json"] = _rewrite(ginr, d / "json.safetensors", raw_meta="{not json")
    f["bad_version"] = _rewrite(ginr, d / "version.safetensors", version="one")
    f["no_model"] = _rewrite(ginr, d / "nomodel.safetensors", raw_meta=json.dumps({"config": {}, "step": 0}))
    f["no_config"] = _rewrite(ginr, d / "noconfig.safetensors", raw_meta=json.dumps({"model": "ginr_tiny", "step": 0}))
    f["nan"] = _rewrite(
        ginr, d / "nan.safetensors", tensors={**state, "pos_embed": torch.full_like(state["pos_embed"], float("nan"))}
    )
    f["finetuned"] = _rewrite(ginr, d / "ft.safetensors", meta={"kind": "finetune"})
    broken = d / "broken_images" / "a"
    broken.mkdir(parents=True)
    for i in range(6):
        (broken / f"{i}.png").write_bytes(b"not a png")
    f["broken_images"] = d / "broken_images"
    f["truncated"] = d / "cut.safetensors"
    f["truncated"].write_bytes(ginr.read_bytes()[:200])
    for name, corrupt in (("bitflip", "flip"), ("emptyidx", "empty"), ("mismatch", "count")):
        root = d / name
        shutil.copytree(fashion_small, root)
        target = root / "train-labels-idx1-ubyte.gz"
        if corrupt == "flip":
            raw = bytearray((root / "train-images-idx3-ubyte.gz").read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            (root / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
        elif corrupt == "empty":
            with gzip.open(target, "wb"):
                pass
        else:
            write_idx(target, np.zeros(10, np.uint8))
        f[name] = root
    scenes = d / "scenes"
    for split in ("train", "val"):
        for sub in ("img_dir", "ann_dir"):
            (scenes / sub / split).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.zeros((56, 56), np.uint8)).save(scenes / "img_dir" / split / f"{i}.png")
            Image.fromarray(np.full((56, 56), 42 if (split, i) == ("val", 3) else 1, np.uint8)).save(
                scenes / "ann_dir" / split / f"{i}.png"
            )
    (scenes / "classes.json").write_text(json.dumps({"classes": ["bg", "a", "b"]}))
    f["bad_scenes"] = scenes
    good = d / "good_scenes"
    shutil.copytree(scenes, good)
    Image.fromarray(np.full((56, 56), 1, np.uint8)).save(good / "ann_dir" / "val" / "3.png")
    f["scenes"] = good
    torch.save({"model": {"patch_embed.proj.weight": torch.zeros(2)}}, d / "not_mae.pth")
    f["not_mae"] = d / "not_mae.pth"

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"model": Payload()}, d / "code.pth")
    f["code"] = d / "code.pth"
    run = d / "run"
    r = CliRunner().invoke(main, _pretrain(run, fashion_small))
    assert r.exit_code == 0, r.output
    f["run"] = run
    return f


P = ["pretrain", "--model", "ginr_tiny", "--max-steps", "2", "--quiet", "--data-root", "{fm}", "--out", "{tmp}/r"]
D = ["--dataset", "digits", "--max-images", "40", "--cache-dir", "{tmp}/cache"]
FT = ["finetune", "--ckpt", "{ginr}", "--out", "{tmp}/ft", "--quiet"]
RUN = [
    "pretrain",
    "--model",
    "mae_tiny",
    "--data-root",
    "{fm}",
    "--out",
    "{run}",
    "--max-steps",
    "1",
    "--batch-size",
    "32",
]

ROWS = [
    # pretrain: names, overrides and values
    (["pretrain", "--model", "nope", "--out", "{tmp}/r"], "unknown model 'nope'"),
    ([*P, "--set", "mask.ratio=1.5"], "mask.ratio must be in (0, 1)"),
    ([*P, "--set", "bogus=1"], "unknown config key"),
    ([*P, "--set", "optim.nme=adam"], "unknown config key 'optim.nme'"),
    ([*P, "--set", "mask.ratio"], "expected KEY=VALUE"),
    ([*P, "--set", "optim.lr=inf"], "optim.lr must be a positive finite number"),
    ([*P, "--set", "optim.lr=-1"], "optim.lr must be a positive finite number"),
    ([*P, "--set", "optim.betas=[2,0.999]"], "optim.betas must be two numbers in [0, 1)"),
    ([*P, "--set", "optim.weight_decay=-1"], "optim.weight_decay must be >= 0"),
    ([*P, "--set", "optim.schedule=linear"], "optim.schedule must be"),
    ([*P, "--set", "train.val_every=0"], "train.val_every must be >= 1"),
    ([*P, "--set", "train.val_max_images=-1"], "train.val_max_images must be positive"),
    ([*P, "--set", "train.batch_size=0"], "train.batch_size must be positive"),
    ([*P, "--epochs", "0"], "train.epochs must be positive"),
    ([*P, "--set", "train.on_nonfinite=ignore"], "train.on_nonfinite must be stop or skip"),
    ([*P, "--set", "train.coord_noise=sideways"], "train.coord_noise must be none or coordwise"),
    ([*P, "--set", "train.epochs=many"], "train.epochs"),
    ([*P, "--set", "mask.kind=stripes"], "mask.kind must be one of"),
    ([*P, "--set", "mask.patch=5"], "mask.patch=5 does not divide the 28-px image"),
    ([*P, "--set", "model_args.depth=0"], "model_args.depth must be a positive integer"),
    ([*P, "--set", "model_args.embed_dim=130"], "must be a multiple of num_heads"),
    ([*P, "--set", "model_args.modulated_layer=5"], "model_args.modulated_layer must name a hidden layer"),
    ([*P, "--set", "model_args.bogus=1"], "does not accept these model_args"),
    (["pretrain", "--model", "mae_tiny", "--out", "{tmp}/r", "--set", "train.render_fraction=0.5"], "renders none"),
    ([*P, "--dataset", "imagefolder:/no/where"], "does not exist"),
    ([*P, "--dataset", "mnist"], "unknown dataset 'mnist'"),
    # pretrain: data that cannot be used
    (["pretrain", "--model", "ginr_tiny", "--data-root", "{missing}", "--out", "{tmp}/r"], "no Fashion-MNIST there"),
    (["pretrain", "--model", "ginr_tiny", "--data-root", "{empty}", "--out", "{tmp}/r"], "no Fashion-MNIST there"),
    (["pretrain", "--model", "ginr_tiny", "--data-root", "{bitflip}", "--out", "{tmp}/r"], "the file is damaged"),
    (["pretrain", "--model", "ginr_tiny", "--data-root", "{emptyidx}", "--out", "{tmp}/r"], "is not an IDX file"),
    (["pretrain", "--model", "ginr_tiny", "--data-root", "{mismatch}", "--out", "{tmp}/r"], "do not match"),
    # pretrain: run directories
    ([*RUN], "pass --resume"),
    ([*RUN, "--resume", "--set", "mask.ratio=0.5"], "different settings: mask.ratio"),
    (["pretrain", "--model", "ginr_tiny", "--out", "{ginr}"], "--out"),
    # inspect: files that are not, or no longer, minr checkpoints
    (["inspect", "{pickle}"], "is a pickle"),
    (["inspect", "{bad_json}"], "metadata is not valid JSON"),
    (["inspect", "{bad_version}"], "malformed format_version 'one'"),
    (["inspect", "{no_model}"], "has no 'model'"),
    (["inspect", "{no_config}"], "has no 'config'"),
    (["inspect", "{wrong_shape}"], "tensor pos_embed is [1, 5, 128], expected [1, 49, 128]"),
    (["inspect", "{other_model}"], "its tensors do not fit transinr_tiny"),
    (["inspect", "{truncated}"], "truncated"),
    (["inspect", "{missing}"], "does not exist"),
    # extract
    (["extract", "{ginr}", *D, "--kind", "dat_mean"], "'dat_mean' does not exist for minr encoders"),
    (["extract", "{ginr}", *D, "--layer", "99"], "--layer 99 does not exist: ginr_tiny has 4 blocks"),
    (["extract", "{ginr}", *D, "--kind", "modulation", "--layer", "0"], "comes from the last block only"),
    (["extract", "{other_model}", *D], "weights do not fit transinr_tiny"),
    (["extract", "{wrong_shape}", *D], "weights do not fit ginr_tiny (size mismatch for pos_embed"),
    (["extract", "{finetuned}", *D], "is a finetune checkpoint, not a pretrained encoder"),
    (["extract", "{nan}", *D], "holds NaN or infinite values"),
    (["extract", "{ginr}", *D, "--mask-ratio", "1.5"], "--mask-ratio must be in [0, 1)"),
    (["extract", "{ginr}", *D, "--split", "nope"], "Invalid value for '--split'"),
    # probe
    (["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--kind", "dat_mean"], "--kind 'dat_mean' does not exist"),
    (["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--knn-k", "0"], "--knn-k must be >= 1"),
    (["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--epochs", "0"], "--epochs must be >= 1"),
    (["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--seeds", "0"], "--seeds must be >= 1"),
    (
        ["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--mask-ratios", "0,x"],
        "--mask-ratios: expected comma-separated",
    ),
    (
        ["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--mask-ratios", "0,1.2"],
        "--mask-ratios must lie in [0, 1)",
    ),
    (["probe", "--ckpt", "{ginr}", *D, "--out", "{tmp}/p", "--method", "svm"], "Invalid value for '--method'"),
    (["probe", "--ckpt", "{pickle}", *D, "--out", "{tmp}/p"], "is a pickle"),
    (["probe", "--ckpt", "{ginr}", *D], "Missing option '--out'"),
    # finetune
    (
        [*FT, "--task", "segmentation", "--dataset", "fashion-scenes:{scenes}", "--mixup", "0.8"],
        "--mixup does not apply to --task segmentation",
    ),
    ([*FT, "--task", "classification", "--regime", "frozen"], "--regime does not apply to --task classification"),
    (
        [*FT, "--task", "segmentation", "--dataset", "fashion-scenes:{scenes}", "--data-root", "{fm}"],
        "--data-root does not apply",
    ),
    ([*FT, "--task", "segmentation"], "--task segmentation needs --dataset"),
    (
        [
            "finetune",
            "--task",
            "segmentation",
            "--ckpt",
            "{mae}",
            "--dataset",
            "fashion-scenes:{scenes}",
            "--backbone",
            "inr",
            "--out",
            "{tmp}/s",
        ],
        "nothing to train: mae_tiny:inr",
    ),
    (
        [*FT, "--task", "segmentation", "--dataset", "fashion-scenes:{bad_scenes}"],
        "has label 42 but the dataset has 3 classes",
    ),
    ([*FT, "--task", "classification", *D[:4], "--layer-decay", "2"], "--layer-decay must be in (0, 1]"),
    ([*FT, "--task", "classification", *D[:4], "--lr", "inf"], "--lr must be a positive finite number"),
    ([*FT, "--task", "classification", *D[:4], "--kind", "modulation"], "fine-tuning pools tokens"),
    ([*FT, "--task", "classification", *D[:4], "--trainable-blocks", "9"], "--trainable-blocks must be in [0, 4]"),
    ([*FT, "--task", "detection"], "Invalid value for '--task'"),
    # export, reconstruct, reconstruct-grid, compare, import-mae, data
    (["export", "{ginr}", "--to", "timm", "--out", "{tmp}/e"], "no timm architecture"),
    (["export", "{ginr}", "--to", "onnx", "--out", "{tmp}/e"], "Invalid value for '--to'"),
    (["export", "{finetuned}", "--to", "mmseg", "--out", "{tmp}/e"], "not a pretrained encoder"),
    (["reconstruct-grid", "{ginr}", "--num-images", "0"], "--num-images"),
    (["reconstruct-grid", "{mae}", "--scale", "2", "--data-root", "{fm}"], "cannot render at 56 px"),
    (["reconstruct-grid", "{finetuned}"], "not a pretrained encoder"),
    (["compare", "{empty}"], "summary.json does not exist"),
    (["reconstruct", "--ckpt", "{finetuned}", "--out", "{tmp}/rc"], "not a pretrained encoder"),
    (
        ["reconstruct", "{ginr}", "--dataset", "digits", "--mask-ratios", "0,0.5", "--out", "{tmp}/rc"],
        "--mask-ratios must lie in (0, 1)",
    ),
    (
        ["reconstruct", "{ginr}", "--dataset", "digits", "--mask-kinds", "random,stripes", "--out", "{tmp}/rc"],
        "unknown kind 'stripes'",
    ),
    (["reconstruct", "{ginr}", "--dataset", "mnist", "--out", "{tmp}/rc"], "unknown dataset 'mnist'"),
    (["reconstruct", "{ginr}", "--dataset", "imagefolder:{empty}", "--out", "{tmp}/rc"], "no images found"),
    (
        ["reconstruct", "{ginr}", "--dataset", "imagefolder:{broken_images}", "--out", "{tmp}/rc", "--quiet"],
        "cannot read image",
    ),
    (["reconstruct-grid", "{ginr}", "{mae}"], "unexpected extra argument"),
    (["reconstruct", "{ginr}", "--scale", "2"], "no --out: the evaluation writes a folder"),
    (["reconstruct", "{ginr}", "--out", "{tmp}/g.png"], "is an image path: the evaluation writes a folder"),
    (["reconstruct"], "give at least one checkpoint"),
    (["import-mae", "{code}", "--out", "{tmp}/m.safetensors"], "refused without running it"),
    (["import-mae", "{not_mae}", "--out", "{tmp}/m.safetensors"], "holds no MAE weights"),
    (["import-mae", "{missing}", "--out", "{tmp}/m.safetensors"], "does not exist"),
    (["data", "make-fashion-scenes", "--out", "{tmp}/sc", "--size", "10"], "--size must be at least 28"),
    (["nonsense"], "No such command 'nonsense'"),
]


@pytest.mark.parametrize("args, message", ROWS, ids=[f"{i:02d}-{r[0][0]}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_exit_2(args, message, files, tmp_path):
    argv = [a.format(tmp=tmp_path, **{k: str(v) for k, v in files.items()}) for a in args]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert message in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_cut_metrics_row_and_stale_temporary_file_do_not_stop_a_resume(files, tmp_path):
    """A kill mid-row in metrics.csv and a checkpoint's half-written temporary file from a dead process: --resume
    drops the cut row, removes the orphan and finishes the run."""
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    (run / "metrics.csv").write_text((run / "metrics.csv").read_text() + "train,2,0,0.0")
    orphan = run / ".checkpoint.safetensors.tmp999999"
    orphan.write_bytes(b"\0" * 1000)
    args = [
        "pretrain",
        "--model",
        "mae_tiny",
        "--data-root",
        str(files["fm"]),
        "--max-steps",
        "2",
        "--batch-size",
        "32",
    ]
    r = CliRunner().invoke(main, [*args, "--out", str(run), "--quiet", "--resume", "--set", "train.val_max_images=8"])
    assert r.exit_code == 2 and "different settings: train.max_steps" in r.output  # the budget is part of the run
    r = CliRunner().invoke(main, _pretrain(run, files["fm"], "--resume"))  # the run's own settings: it resumes
    assert r.exit_code == 0, r.output
    rows = (run / "metrics.csv").read_text().splitlines()
    assert not orphan.exists() and all(not r.startswith("train,2,") for r in rows)
    assert load_file(str(run / "checkpoint.safetensors"))  # still a whole checkpoint
