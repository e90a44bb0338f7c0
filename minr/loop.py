"""The one training loop: pretraining, classification fine-tuning and segmentation all run through `fit`.

schedule -> forward -> backward -> clip -> step -> log -> checkpoint, visible in one function. What differs
between the three is the step function (what a batch is and what its loss is) and what is checkpointed with
which metadata. Randomness is keyed (`minr.runtime`): data order by (seed, epoch), every step's torch and
numpy generators by (seed, step, rank). So a run killed at any moment and resumed from its checkpoint continues
exactly as if it had never stopped.
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

from minr.checkpoint import Checkpoint, load_checkpoint, read_meta, save_checkpoint
from minr.errors import MinrError
from minr.progress import TrainProgress
from minr.runtime import Dist, autocast, barrier, epoch_batches, mean_over_ranks, seed_step

SINGLE = Dist()  # one process


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

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.busy_s if self.busy_s else None


def open_run(
    path: Path,
    *,
    identity: dict[str, Any],
    resume: bool,
    loose: frozenset[str] = frozenset(),
    kind: str | None = None,
):
    """The checkpoint to continue from, or None for a fresh run. Refuses to overwrite a run without `resume`,
    to resume a checkpoint of another `kind` (a fine-tuning checkpoint where a pretraining run is expected), and
    one whose config (`identity`, what the checkpoint's meta stores as `config`) differs, except in `loose` keys."""
    if not path.exists():
        return None
    if not resume:
        raise MinrError(
            f"{path.parent} already holds a run ({path.name}); pass --resume to continue it or choose another --out"
        )
    found = read_meta(path).get("kind")
    if kind is not None and found != kind:
        raise MinrError(
            f"--resume: {path} is a {found} checkpoint, not a {kind} run's; resume it with the command that wrote "
            "it, or choose another --out"
        )
    ckpt = load_checkpoint(path)
    old, new = flatten(ckpt.meta.get("config", {})), flatten(identity)
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in loose)
    if diff:
        k = diff[0]
        raise MinrError(
            f"--resume into {path.parent} with different settings: {k} was {old.get(k)!r}, now {new.get(k)!r}"
            f" ({len(diff)} setting(s) differ); use the run's own settings or a new --out"
        )
    return ckpt


def restore(ckpt: Checkpoint | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint's weights and optimiser state; return its step (0 for a fresh run)."""
    if ckpt is None:
        return 0
    try:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optim_state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise MinrError(f"the checkpoint to resume does not fit this model ({str(e).splitlines()[0]})") from None
    return ckpt.meta["step"]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; `model_args` stays one value."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model_args":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


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
    env: Dist = SINGLE,
    collate_fn: Callable | None = None,
    workers: int = 0,
    evaluate: Callable[[int, int], None] | None = None,
    log: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    description: str = "train",
) -> FitResult:
    """Train `model` from `start_step` to `plan.total`; `step_fn(batch, step)` runs the forward pass (under
    autocast) and returns the loss. Checkpoints (`meta(step, epoch)` describes them) are written by rank 0."""
    per_epoch = len(dataset) // plan.batch_size
    if per_epoch == 0:
        raise MinrError(
            f"{len(dataset)} training images are fewer than one batch of {plan.batch_size}; lower the batch size"
        )
    result, step, saved = FitResult(start_step, 0, 0.0, []), start_step, start_step
    if step == 0 and 0 in plan.keep:  # the randomly initialised model, a control for every evaluation
        _save(model, optimizer, ckpt_path, meta(0, 0), env, 0, keep=True)
    model.train()
    with TrainProgress(plan.total, start=step, enabled=progress and env.main, description=description) as bar:
        while step < plan.total:
            epoch = step // per_epoch
            batches = epoch_batches(len(dataset), plan.batch_size, epoch, plan.seed)[step % per_epoch :]
            shards = [b[env.rank :: env.world] for b in batches]  # every rank its slice of each global batch
            for batch in DataLoader(dataset, batch_sampler=shards, num_workers=workers, collate_fn=collate_fn):
                t0 = time.perf_counter()
                seed_step(plan.seed, step, env.rank)
                factor = lr_factor(
                    step,
                    plan.total,
                    schedule=plan.schedule,
                    warmup_fraction=plan.warmup_fraction,
                    decay_at=plan.decay_at,
                )
                for g in optimizer.param_groups:
                    g["lr"] = plan.lr * g.get("lr_scale", 1.0) * factor
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
                result.busy_s += dt
                result.images += out.images * env.world
                result.losses.append(loss)
                if env.main:
                    lr = optimizer.param_groups[0]["lr"]
                    if log is not None:
                        log(
                            {
                                "step": step,
                                "epoch": epoch,
                                "loss": loss,
                                "lr": lr,
                                "images_per_s": out.images * env.world / dt,
                                **out.metrics,
                            }
                        )
                    bar.update(step, loss=loss, metrics=out.metrics, ips=result.images_per_s)
                epoch_end, last = step % per_epoch == 0, step == plan.total
                if epoch_end or last or step in plan.keep or (plan.ckpt_every and step % plan.ckpt_every == 0):
                    due = last or (epoch_end and plan.val_every and (step // per_epoch) % plan.val_every == 0)
                    if evaluate is not None and due:
                        evaluate(step, epoch)
                        model.train()
                    _save(model, optimizer, ckpt_path, meta(step, epoch), env, step, keep=step in plan.keep)
                    saved = step
                if last:
                    break
    result.step = step
    return result


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
