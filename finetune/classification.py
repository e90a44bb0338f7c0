"""`minrctl finetune --task classification`: the MAE fine-tuning recipe scaled to the data, for every checkpoint
and seed, through the one training loop (exact resume), with the paired MINR - MAE comparison."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader, Subset

from finetune.classifier import EncoderClassifier, freeze_all_but_last
from finetune.configs import FinetuneConfig
from finetune.report import FinetuneEntry, FinetuneResults, run_name, write_results
from minr.build import encoder_skeleton, model_from_checkpoint
from minr.data import check_classification, data_inputs, load_split
from minr.errors import MinrError
from minr.io import git_sha, output_location
from minr.loop import LoopPlan, StepResult
from minr.optim import adamw, layer_decay_groups
from minr.parallel import data_parallel, gather_rows, shard
from minr.run import RunSpec, main_locked, training_run
from minr.runtime import SINGLE, Dist, distributed_device, hardware
from probes.stats import minr_vs_mae

CKPT = "finetune.safetensors"


@dataclass(frozen=True)
class SeedRun:
    """One checkpoint fine-tuned with one seed."""

    predictions: np.ndarray  # test predictions
    labels: np.ndarray
    test_accuracy: float
    val_accuracy: float
    steps: int
    train_images_per_s: float | None


def _build(cfg: FinetuneConfig, ckpt: str, num_classes: int, device: torch.device) -> EncoderClassifier:
    encoder, _, _ = model_from_checkpoint(ckpt, drop_path_rate=cfg.drop_path)
    model = EncoderClassifier(encoder, num_classes, kind=cfg.kind or encoder.FINETUNE_KIND)
    freeze_all_but_last(model, cfg.trainable_blocks)
    return model.to(device)


@torch.no_grad()
def predict(
    model: EncoderClassifier, data, device: torch.device, batch_size: int = 256, env: Dist = SINGLE
) -> np.ndarray:
    """Predicted classes of every image of `data`; under `torchrun` each rank predicts its share."""
    model.eval()
    mine = Subset(data, shard(len(data), env))
    out = [model(x.to(device)).argmax(1).cpu() for x, _, _ in DataLoader(mine, batch_size=batch_size)]
    return gather_rows(out, env).numpy()


def settings(cfg: FinetuneConfig) -> dict[str, Any]:
    """The settings that shape every run (not which checkpoints, how many seeds or where it runs)."""
    d = dataclasses.asdict(cfg)
    for k in ("ckpts", "names", "groups", "seeds", "device", "compile"):  # compile: how, not what, it computes
        d.pop(k)
    return d


def identity(cfg: FinetuneConfig, ckpt: str, seed: int) -> dict[str, Any]:
    """What one fine-tuning run is: its settings, the pretrained checkpoint and the seed (resume checks them)."""
    return {**settings(cfg), "pretrained": str(ckpt), "seed": seed}


def finetune_one(cfg: FinetuneConfig, ckpt: str, seed: int, out: Path, *, resume: bool, progress: bool) -> SeedRun:
    """Fine-tune one checkpoint with one seed; checkpoints in `out`, resumable exactly. Under `torchrun`: DDP at
    the same global batch, rank 0 checkpointing."""
    device, env = distributed_device(cfg.device)
    if cfg.batch_size % env.world:
        raise MinrError(f"--batch-size {cfg.batch_size} must divide among {env.world} processes")
    if (cfg.mixup or cfg.cutmix) and (cfg.batch_size // env.world) % 2:
        raise MinrError(
            f"--mixup/--cutmix pair the images of each process's batch: --batch-size {cfg.batch_size} gives "
            f"{cfg.batch_size // env.world} per process; make it even"
        )
    skeleton, pre_meta = encoder_skeleton(ckpt)
    size = {"image_size": skeleton.image_size, "in_chans": skeleton.in_chans}
    train, val, test = (load_split(cfg.data, s, **size) for s in ("train", "val", "test"))
    num_classes = check_classification(train.source.labels, train.classes, f"{cfg.data.name} (train)")
    fingerprints = {"train": train.fingerprint(), "val": val.fingerprint(), "test": test.fingerprint()}
    spec = RunSpec(out / CKPT, kind="finetune", identity=identity(cfg, ckpt, seed))
    with training_run(spec, resume=resume, fingerprints=fingerprints, lock=env.main) as run:
        torch.manual_seed(seed)
        model = _build(cfg, ckpt, num_classes, device)
        arch = {"model": pre_meta["model"], "model_args": pre_meta["config"]["model_args"], "family": skeleton.family}
        run.start(model, _optimizer(cfg, model), record={**arch, "pretrained": str(ckpt), "seed": seed})
        total = min(cfg.epochs * max(len(train) // cfg.batch_size, 1), cfg.max_steps or 10**12)
        plan = LoopPlan(
            total=total,
            batch_size=cfg.batch_size,
            seed=seed,
            lr=cfg.lr,
            schedule="cosine",
            warmup_fraction=cfg.warmup_fraction,
        )
        if cfg.compile:
            model.compile()
        step_fn = classification_step(cfg, data_parallel(model, env), num_classes, device)
        result = run.fit(
            train, step_fn, plan, device=device, env=env, progress=progress, description=f"finetune {out.parent.name}"
        )
        pred = predict(model, test, device, env=env)
        val_acc = float((predict(model, val, device, env=env) == val.source.labels).mean())
    return SeedRun(
        pred, test.source.labels, float((pred == test.source.labels).mean()), val_acc, result.step, result.images_per_s
    )


def _optimizer(cfg: FinetuneConfig, model: EncoderClassifier) -> torch.optim.Optimizer:
    """AdamW over layer-decayed groups (the MAE recipe): the head at the base rate, each block below it at
    `layer_decay` times the rate of the one above."""
    groups = layer_decay_groups(
        model,
        model.encoder,
        prefix=EncoderClassifier.ENCODER_PREFIX,
        weight_decay=cfg.weight_decay,
        layer_decay=cfg.layer_decay,
    )
    return adamw(groups)


def classification_step(cfg: FinetuneConfig, model: torch.nn.Module, num_classes: int, device: torch.device):
    """The step function of `model` (the classifier or its DDP wrapper): cross-entropy with label smoothing, or
    soft-target cross-entropy under Mixup/CutMix."""
    mixup = None
    if cfg.mixup or cfg.cutmix:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.label_smoothing,
            num_classes=num_classes,
        )

    def step_fn(batch, step: int) -> StepResult:
        x, y, _ = batch
        x, y = x.to(device), y.to(device)
        if mixup is not None:
            x, soft = mixup(x, y)
            return StepResult(SoftTargetCrossEntropy()(model(x).float(), soft), len(x))
        return StepResult(F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing), len(x))

    return step_fn


def run_finetune(
    cfg: FinetuneConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> FinetuneResults:
    """Every checkpoint x seed; then accuracy mean ± std and the paired MINR - MAE comparison (seed 0)."""
    inputs = [*cfg.ckpts, *data_inputs(cfg.data)]
    out, t0 = output_location(out_dir, inputs=inputs), time.perf_counter()
    with main_locked(out, distributed_device(cfg.device)[1], inputs=inputs) as main:
        entries, runs, taken = [], {}, set()
        given = dict(zip(cfg.ckpts, cfg.names, strict=False))
        for ckpt in cfg.ckpts:
            name, family = run_name(ckpt, taken, given.get(ckpt))
            runs[name] = [
                finetune_one(cfg, ckpt, s, out / name.replace("/", "_") / f"seed{s}", resume=resume, progress=progress)
                for s in range(cfg.seeds)
            ]
            accs = [r.test_accuracy for r in runs[name]]
            entries.append(
                FinetuneEntry(
                    name=name,
                    ckpt=str(ckpt),
                    family=family,
                    mean=float(np.mean(accs)),
                    std=float(np.std(accs)),
                    per_seed=accs,
                    val_accuracy=[r.val_accuracy for r in runs[name]],
                    steps=runs[name][0].steps,
                    train_images_per_s=runs[name][0].train_images_per_s,
                )
            )
        labels = runs[entries[0].name][0].labels
        paired = minr_vs_mae(
            [(e.name, e.family, runs[e.name][0].predictions == labels) for e in entries],
            method="finetune",
            metric="accuracy",
            groups=list(cfg.groups) or None,
        )
        results = FinetuneResults(
            task="classification",
            config={**settings(cfg), "seeds": cfg.seeds},
            entries=entries,
            paired=paired,
            evaluated_images=len(labels),
            runtime_s=time.perf_counter() - t0,
            git_sha=git_sha(),
            hardware=hardware(),
        )
        arrays = {f"{n}|seed{s}": r.predictions for n, rs in runs.items() for s, r in enumerate(rs)}
        if main:
            write_results(results, out, {"labels": labels, **arrays})
    return results
