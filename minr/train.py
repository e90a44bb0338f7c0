"""Pretraining: one explicit loop for every model (MINR hypernetworks and MAE), on CPU, GPU or `torchrun` DDP.

schedule -> forward -> backward -> clip -> step -> log -> checkpoint, all visible in `pretrain`. Randomness is
keyed, not stateful: data order by (seed, epoch), masks by (seed, image index), dropout by (seed, step, rank). So a
run resumed from a checkpoint continues exactly as if it had never stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from minr import masking
from minr.build import build_model
from minr.checkpoint import atomic_write_text, git_sha, load_checkpoint, save_checkpoint
from minr.config import OptimConfig, PretrainConfig, to_dict, to_yaml
from minr.data import ImageDataset, load_split
from minr.errors import MinrError
from minr.metrics import PROTOCOLS, psnr_from_mse, psnr_protocols
from minr.progress import TrainProgress

CKPT_NAME = "checkpoint.safetensors"
# Keys that may differ when resuming: they change where or how verbosely a run goes, not what it computes.
RESUMABLE_KEYS = {"train.device", "data.workers", "train.log", "data.root"}


# -- pure pieces --------------------------------------------------------------------------------------------------
def lr_at(step: int, total: int, cfg: OptimConfig) -> float:
    """Learning rate for optimiser step `step` (0-based) of `total`: linear warm-up, then constant, a x0.1 step
    at `decay_at` of the run (TransINR), or cosine to zero (MAE)."""
    warmup = int(cfg.warmup_fraction * total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.schedule == "step":
        return cfg.lr * (0.1 if step >= int(cfg.decay_at * total) else 1.0)
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr


def epoch_batches(n: int, batch: int, epoch: int, seed: int) -> list[list[int]]:
    """The epoch's full batches of dataset indices, shuffled by (seed, epoch) alone (the last partial is dropped)."""
    order = torch.randperm(n, generator=masking.image_generator(seed, "order", epoch)).tolist()
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(masking.image_generator(seed, f"step{rank}", step).initial_seed())


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MinrError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; with weight decay, biases, norms, tokens and embeddings (ndim <= 1 or named so) get none."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay > 0:
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "token" not in n]
        ids = {id(p) for p in decay}
        params = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if id(p) not in ids], "weight_decay": 0.0},
        ]
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


# -- distributed ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# -- validation -----------------------------------------------------------------------------------------------------
@torch.no_grad()
def validate(model: nn.Module, data: ImageDataset, cfg: PretrainConfig, device: torch.device) -> dict[str, float]:
    """Mean loss and per-image PSNR under the three protocols, with fixed masks (salt "val")."""
    model.eval()
    n = min(len(data), cfg.train.val_max_images or len(data))
    loader = DataLoader(torch.utils.data.Subset(data, range(n)), batch_size=cfg.train.batch_size)
    sums, loss_sum = dict.fromkeys(PROTOCOLS, 0.0), 0.0
    for images, _, idx in loader:
        images = images.to(device)
        mask = masking.make_masks(idx, cfg.mask, data.image_size, seed=cfg.train.seed, salt="val").to(device)
        with _autocast(device):
            out = model(images, mask, cfg.mask.patch)
        loss_sum += out.loss.item() * len(images)
        for k, v in psnr_protocols(out.recon, images, out.pixel_mask).items():
            sums[k] += v.sum().item()
    model.train()
    return {"val_loss": loss_sum / n, **{f"psnr_{k}": v / n for k, v in sums.items()}}


def _autocast(device: torch.device):
    """bf16 autocast on CUDA; fp32 on CPU (CPU bf16 matmuls are slower than fp32 on most machines)."""
    return (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )


# -- logging --------------------------------------------------------------------------------------------------------
FIELDS = ["kind", "step", "epoch", "loss", "lr", "psnr", "images_per_s", "val_loss", *(f"psnr_{p}" for p in PROTOCOLS)]


class MetricsLog:
    """metrics.csv (always) and TensorBoard (when asked). On resume, rows past the checkpoint's step are dropped."""

    def __init__(self, out: Path, *, resume_step: int | None, tensorboard: bool) -> None:
        self.path = out / "metrics.csv"
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MinrError("train.log=tensorboard needs tensorboard: pip install 'minr[tensorboard]'") from None
            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, FIELDS).writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("kind", "step", "epoch") and v is not None and v != "":
                    self.tb.add_scalar(f"{row['kind']}/{k}", float(v), int(row["step"]))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# -- the run --------------------------------------------------------------------------------------------------------
def _prepare_out(out: Path, cfg: PretrainConfig, resume: bool):
    """Check the run directory; return the checkpoint to resume from (or None)."""
    ckpt_path = out / CKPT_NAME
    if not ckpt_path.exists():
        return None
    if not resume:
        raise MinrError(
            f"{out} already holds a run ({CKPT_NAME}); pass --resume to continue it or choose another --out"
        )
    ckpt = load_checkpoint(ckpt_path)
    old, new = _flat(ckpt.meta["config"]), _flat(to_dict(cfg))
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUMABLE_KEYS)
    if diff:
        k = diff[0]
        raise MinrError(
            f"--resume into {out} with a different config: {k} was {old.get(k)!r}, now {new.get(k)!r}"
            f" ({len(diff)} key(s) differ); use the run's own settings or a new --out"
        )
    return ckpt


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model_args":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _meta(cfg: PretrainConfig, family: str, step: int, epoch: int, sha: str) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "family": family,
        "config": to_dict(cfg),
        "step": step,
        "epoch": epoch,
        "git_sha": sha,
        "rng": {"scheme": "keyed", "seed": cfg.train.seed},
    }


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Run:
    """What one pretraining session holds: built once by `_setup`, then read by the loop."""

    cfg: PretrainConfig
    out: Path
    device: torch.device
    env: Dist
    model: nn.Module
    optim: torch.optim.Optimizer
    data: ImageDataset
    val: ImageDataset
    steps_per_epoch: int
    total: int
    step: int
    sha: str
    log: MetricsLog | None


def _setup(cfg: PretrainConfig, out_dir: str | Path, resume: bool) -> Run:
    device = resolve_device(cfg.train.device)
    env = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if cfg.train.batch_size % env.world:
        raise MinrError(f"train.batch_size {cfg.train.batch_size} must divide among {env.world} processes")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = _prepare_out(out, cfg, resume)
    model = build_model(cfg).to(device)
    data = load_split(cfg.data, "train", image_size=model.image_size, in_chans=model.in_chans)
    val = load_split(cfg.data, "val", image_size=model.image_size, in_chans=model.in_chans)
    steps_per_epoch = len(data) // cfg.train.batch_size
    if steps_per_epoch == 0:
        raise MinrError(
            f"{cfg.data.name}: {len(data)} training images, fewer than one batch of "
            f"{cfg.train.batch_size}; lower --set train.batch_size"
        )
    optim = build_optimizer(model, cfg.optim)
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        optim.load_state_dict(ckpt.optim_state)
    step, sha = (ckpt.meta["step"] if ckpt else 0), git_sha()
    log = None
    if env.main:
        atomic_write_text(out / "config.yaml", to_yaml(cfg) + f"# git_sha: {sha}\n")
        log = MetricsLog(out, resume_step=step if ckpt else None, tensorboard=cfg.train.log == "tensorboard")
    total = int(min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf))
    return Run(cfg, out, device, env, model, optim, data, val, steps_per_epoch, total, step, sha, log)


def _train_step(run: Run, net: nn.Module, images: torch.Tensor, idx: torch.Tensor):
    """One optimiser step on this rank's share of the global batch. Returns (global mean loss, output)."""
    cfg, model = run.cfg, run.model
    torch.manual_seed(step_seed(cfg.train.seed, run.step, run.env.rank))  # dropout, keyed by step and rank
    for group in run.optim.param_groups:
        group["lr"] = lr_at(run.step, run.total, cfg.optim)
    mask = masking.make_masks(idx, cfg.mask, model.image_size, seed=cfg.train.seed, salt="train")
    with _autocast(run.device):
        out = net(
            images, mask.to(run.device), cfg.mask.patch, _pixel_subset(cfg, model.image_size, run.step, run.device)
        )
    run.optim.zero_grad(set_to_none=True)
    out.loss.backward()
    if cfg.optim.clip_grad:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
    run.optim.step()
    run.step += 1
    return _mean_over_ranks(out.loss.detach(), run.env), out


def _validate_and_save(run: Run, epoch: int, *, validate_now: bool) -> dict[str, float]:
    metrics = {}
    if run.env.main and validate_now:
        metrics = validate(run.model, run.val, run.cfg, run.device)
        run.log.write({"kind": "val", "step": run.step, "epoch": epoch, **{k: f"{v:.4f}" for k, v in metrics.items()}})
    if run.env.main:
        save_checkpoint(
            run.out / CKPT_NAME,
            model_state=run.model.state_dict(),
            optim_state=run.optim.state_dict(),
            meta=_meta(run.cfg, run.model.family, run.step, epoch, run.sha),
        )
    _barrier(run.env)
    return metrics


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Pretrain `cfg.model` and write checkpoint, metrics.csv, config.yaml and summary.json into `out_dir`."""
    run = _setup(cfg, out_dir, resume)
    env, per_epoch = run.env, run.steps_per_epoch
    net = DistributedDataParallel(run.model) if env.world > 1 else run.model
    val_metrics: dict[str, float] = {}
    seen, busy = 0, 0.0
    run.model.train()
    with TrainProgress(run.total, start=run.step, enabled=progress and env.main) as bar:
        while run.step < run.total:
            epoch = run.step // per_epoch
            batches = epoch_batches(len(run.data), cfg.train.batch_size, epoch, cfg.train.seed)[run.step % per_epoch :]
            shards = [b[env.rank :: env.world] for b in batches]  # every rank its slice of each global batch
            for images, _, idx in DataLoader(run.data, batch_sampler=shards, num_workers=cfg.data.workers):
                t0 = time.perf_counter()
                images = images.to(run.device, non_blocking=True)
                loss, out = _train_step(run, net, images, idx)
                dt = time.perf_counter() - t0
                busy, seen = busy + dt, seen + len(images) * env.world
                psnr = None if out.recon is None else _batch_psnr(out.recon.detach(), images)
                if env.main:
                    run.log.write(
                        {
                            "kind": "train",
                            "step": run.step,
                            "epoch": epoch,
                            "loss": f"{loss:.6f}",
                            "lr": f"{run.optim.param_groups[0]['lr']:.3e}",
                            "psnr": _fmt(psnr),
                            "images_per_s": f"{len(images) * env.world / dt:.1f}",
                        }
                    )
                    bar.update(run.step, loss=loss, psnr=psnr, ips=seen / busy)
                end_of_epoch, last = run.step % per_epoch == 0, run.step == run.total
                if end_of_epoch or last or run.step % cfg.train.ckpt_every == 0:
                    due = last or (end_of_epoch and (run.step // per_epoch) % cfg.train.val_every == 0)
                    val_metrics = _validate_and_save(run, epoch, validate_now=due) or val_metrics
                if last:
                    break
    if env.main and not val_metrics:  # resumed a finished run: validate again so the summary stays complete
        val_metrics = validate(run.model, run.val, cfg, run.device)
    summary = {
        "model": cfg.model,
        "steps": run.step,
        "images_seen_this_session": seen,
        "train_images_per_s": seen / busy if busy else None,
        "peak_memory_mb": peak_memory_mb(run.device),
        "device": str(run.device),
        "world_size": env.world,
        **val_metrics,
    }
    if env.main:
        run.log.close()
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2))
    return summary


def _batch_psnr(recon: torch.Tensor, images: torch.Tensor) -> float:
    """Mean per-image full-image PSNR of a training batch (the progress bar's figure; val reports all three)."""
    return psnr_from_mse(((recon.float().clamp(0, 1) - images) ** 2).flatten(1).mean(1)).mean().item()


def _pixel_subset(cfg: PretrainConfig, size: int, step: int, device: torch.device) -> torch.Tensor | None:
    """A random subset of pixel indices for this step (`train.render_fraction` < 1), shared by the batch."""
    if cfg.train.render_fraction >= 1:
        return None
    n = size * size
    g = masking.image_generator(cfg.train.seed, "pixels", step)
    return torch.randperm(n, generator=g)[: max(1, int(n * cfg.train.render_fraction))].to(device)


def _mean_over_ranks(x: torch.Tensor, env: Dist) -> float:
    if env.world > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= env.world
    return x.item()


def _barrier(env: Dist) -> None:
    if env.world > 1:
        dist.barrier()


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"
