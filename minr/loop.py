"""The one training loop: pretraining, classification fine-tuning and segmentation all run through `fit`.

schedule -> forward -> backward -> clip -> step -> log -> checkpoint, visible in one function. What differs
between the three is the step function (what a batch is and what its loss is) and what is checkpointed with
which metadata; opening, locking and restoring a run is `minr.run`'s. Randomness is keyed (`minr.runtime`): data
order by (seed, epoch), every step's torch and numpy generators by (seed, step, rank). So a run killed at any
moment and resumed from its checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from minr.checkpoint import save_checkpoint
from minr.errors import MinrError
from minr.progress import TrainProgress
from minr.runtime import SINGLE, Dist, autocast, barrier, epoch_batches, mean_over_ranks, seed_step


def lr_factor(step: int, total: int, *, schedule: str, warmup_fraction: float = 0.0, decay_at: float = 0.8) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total`, as a fraction of the base rate: linear
    warm-up, then constant, a x0.1 step at `decay_at` of the run (TransINR), cosine to zero (MAE) or linear
    ("poly", power 1) to zero (mmseg)."""
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "step":
        return 0.1 if step >= int(decay_at * total) else 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return max(0.0, 1 - progress)
    return 1.0


@dataclass(frozen=True)
class LoopPlan:
    """How long and how a model trains. Param groups may carry an `lr_scale` (layer decay) on top of `lr`."""

    total: int
    batch_size: int  # global: each of `world` processes gets batch_size // world
    seed: int
    lr: float
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    decay_at: float = 0.8
    clip_grad: float | None = None
    ckpt_every: int | None = None  # a checkpoint also at every epoch end and at the last step
    val_every: int | None = None  # epochs between evaluations; one always runs at the last step
    on_nonfinite: str = "stop"  # a NaN/inf loss stops the run (the last checkpoint stays good) or skips the step
    keep: tuple[int, ...] = ()  # steps whose checkpoints are also kept under their own name (learning curves)


@dataclass
class StepResult:
    """What a step function returns: the loss to minimise, how many images it saw, figures for the log."""

    loss: torch.Tensor
    images: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FitResult:
    step: int
    images: int  # seen in this session, every rank counted
    busy_s: float
    losses: list[float]  # of this session's steps
    skipped: int = 0
    before: tuple[int, float] = (0, 0.0)  # (images, busy seconds) of the sessions before this one

    @property
    def images_per_s(self) -> float | None:
        """Over the whole run, the sessions before a resume included (their totals are in the checkpoint)."""
        busy = self.busy_s + self.before[1]
        return (self.images + self.before[0]) / busy if busy else None

    def totals(self) -> dict[str, float]:
        """What each checkpoint records, so that a resumed run still knows its speed."""
        return {"trained_images": self.images + self.before[0], "trained_busy_s": self.busy_s + self.before[1]}

    def add(self, loss: float, images: int, seconds: float) -> None:
        """Count a step taken."""
        self.losses.append(loss)
        self.images += images
        self.busy_s += seconds


def apply_gradients(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip_grad: float | None = None
) -> None:
    """Backward, optional gradient-norm clipping and the optimiser step: the update of every training step (the
    speed benchmark times this same function)."""
    loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    step_fn: Callable[[Any, int], StepResult],
    plan: LoopPlan,
    *,
    ckpt_path: Path,
    meta: Callable[[int, int], dict[str, Any]],
    device: torch.device,
    start_step: int = 0,
    before: tuple[int, float] = (0, 0.0),
    env: Dist = SINGLE,
    collate_fn: Callable | None = None,
    workers: int = 0,
    evaluate: Callable[[int, int], None] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    description: str = "train",
) -> FitResult:
    """Train `model` from `start_step` to `plan.total`; `step_fn(batch, step)` runs the forward pass (under
    autocast) and returns the loss. Checkpoints (`meta(step, epoch)` describes them, with the run's image and busy
    totals; `before`: those of the checkpoint resumed) are written by rank 0."""
    per_epoch = _steps_per_epoch(len(dataset), plan.batch_size)
    result, step, saved = FitResult(start_step, 0, 0.0, [], before=before), start_step, start_step
    if step == 0 and 0 in plan.keep:  # the randomly initialised model, a control for every evaluation
        _save(model, optimizer, ckpt_path, meta(0, 0), env, 0, keep=True)
    model.train()
    with TrainProgress(plan.total, start=step, enabled=progress and env.main, description=description) as bar:
        while step < plan.total:
            epoch = step // per_epoch
            for batch in _rest_of_epoch(dataset, plan, step, per_epoch, env, workers=workers, collate_fn=collate_fn):
                t0 = time.perf_counter()
                seed_step(plan.seed, step, env.rank)
                set_lr(optimizer, plan, step)
                with autocast(device):
                    out = step_fn(batch, step)
                loss = mean_over_ranks(out.loss.detach(), env)
                optimizer.zero_grad(set_to_none=True)
                if math.isfinite(loss):
                    apply_gradients(model, optimizer, out.loss, plan.clip_grad)
                elif plan.on_nonfinite == "skip":
                    result.skipped += 1
                else:
                    raise _nonfinite(loss, step, saved, ckpt_path)
                step += 1
                dt = time.perf_counter() - t0
                result.add(loss, out.images * env.world, dt)
                if env.main:
                    if log is not None:
                        log(_row(step, epoch, loss, optimizer, out, images_per_s=out.images * env.world / dt))
                    bar.update(step, loss=loss, metrics=out.metrics, ips=result.images_per_s)
                save, validate = _due(plan, step, per_epoch)
                if save:
                    if evaluate is not None and validate:
                        evaluate(step, epoch)
                        model.train()
                    info = {**meta(step, epoch), **result.totals()}
                    _save(model, optimizer, ckpt_path, info, env, step, keep=step in plan.keep)
                    saved = step
                if step == plan.total:
                    break
    result.step = step
    return result


def _steps_per_epoch(images: int, batch_size: int) -> int:
    if images < batch_size:
        raise MinrError(f"{images} training images are fewer than one batch of {batch_size}; lower the batch size")
    return images // batch_size


def set_lr(optimizer: torch.optim.Optimizer, plan: LoopPlan, step: int) -> None:
    """The schedule: every param group's learning rate at `step`, with the group's `lr_scale` (layer decay)."""
    factor = lr_factor(
        step, plan.total, schedule=plan.schedule, warmup_fraction=plan.warmup_fraction, decay_at=plan.decay_at
    )
    for g in optimizer.param_groups:
        g["lr"] = plan.lr * g.get("lr_scale", 1.0) * factor


def _rest_of_epoch(
    dataset: Dataset, plan: LoopPlan, step: int, per_epoch: int, env: Dist, *, workers: int, collate_fn
) -> DataLoader:
    """The batches left in the epoch of `step`, in the epoch's keyed order; every rank gets its slice of each
    global batch, so the batches a resumed run sees are those it would have seen."""
    batches = epoch_batches(len(dataset), plan.batch_size, step // per_epoch, plan.seed)[step % per_epoch :]
    shards = [b[env.rank :: env.world] for b in batches]
    return DataLoader(dataset, batch_sampler=shards, num_workers=workers, collate_fn=collate_fn)


def _due(plan: LoopPlan, step: int, per_epoch: int) -> tuple[bool, bool]:
    """Whether the step just taken is checkpointed (each epoch end, the last step, kept steps, every
    `ckpt_every`), and whether it is evaluated first (every `val_every` epochs, and the last step)."""
    epoch_end, last = step % per_epoch == 0, step == plan.total
    save = epoch_end or last or step in plan.keep or bool(plan.ckpt_every and step % plan.ckpt_every == 0)
    validate = last or bool(epoch_end and plan.val_every and (step // per_epoch) % plan.val_every == 0)
    return save, save and validate


def _row(step: int, epoch: int, loss: float, optimizer, out: StepResult, *, images_per_s: float) -> dict[str, Any]:
    """The log's row of a step: its loss, the learning rate it ran at, its throughput and the step's figures."""
    lr = optimizer.param_groups[0]["lr"]
    return {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": images_per_s, **out.metrics}


def kept_path(path: Path, step: int) -> Path:
    """Where the checkpoint of a kept step lives: beside the run's checkpoint."""
    return path.with_name(f"{path.stem}-step{step:06d}{path.suffix}")


def _save(
    model: nn.Module, optimizer, path: Path, meta: dict[str, Any], env: Dist, step: int, keep: bool = False
) -> None:
    if env.main:
        bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:  # never replace a good checkpoint with a broken model
            raise MinrError(
                f"parameter {bad} is not finite at step {step}; the checkpoint in {path.parent} is kept as it "
                "was. Lower the learning rate (optim.lr) or clip gradients (optim.clip_grad)"
            )
        save_checkpoint(path, model_state=model.state_dict(), optim_state=optimizer.state_dict(), meta=meta)
        if keep:  # the weights alone: a kept checkpoint is for evaluation, not for resuming
            save_checkpoint(kept_path(path, step), model_state=model.state_dict(), meta=meta)
    barrier(env)


def _nonfinite(loss: float, step: int, saved: int, path: Path) -> MinrError:
    kept = f"the checkpoint of step {saved} in {path.parent} is kept" if saved else "no checkpoint was written"
    return MinrError(
        f"the loss is {loss} at step {step + 1}; training stopped and {kept}. Lower the learning rate "
        "(optim.lr), clip gradients (optim.clip_grad), or pass --set train.on_nonfinite=skip to skip such steps"
    )
