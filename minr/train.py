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
from minr.metrics import PROTOCOLS, psnr_protocols
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


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Pretrain `cfg.model` and write checkpoint, metrics.csv, config.yaml and summary.json into `out_dir`."""
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
    total = min(cfg.train.epochs * steps_per_epoch, cfg.train.max_steps or math.inf)
    optim = build_optimizer(model, cfg.optim)
    step = 0
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        optim.load_state_dict(ckpt.optim_state)
        step = ckpt.meta["step"]
    sha = git_sha()
    if env.main:
        atomic_write_text(out / "config.yaml", to_yaml(cfg) + f"# git_sha: {sha}\n")
    log = (
        MetricsLog(out, resume_step=step if ckpt else None, tensorboard=cfg.train.log == "tensorboard")
        if env.main
        else None
    )
    net = DistributedDataParallel(model) if env.world > 1 else model
    bar = TrainProgress(total, start=step, enabled=progress and env.main)
    val_metrics: dict[str, float] = {}
    seen, train_time = 0, 0.0
    model.train()
    with bar:
        while step < total:
            epoch = step // steps_per_epoch
            batches = epoch_batches(len(data), cfg.train.batch_size, epoch, cfg.train.seed)
            loader = DataLoader(
                data,
                batch_sampler=[b[env.rank :: env.world] for b in batches[step % steps_per_epoch :]],
                num_workers=cfg.data.workers,
            )
            for images, _, idx in loader:
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(cfg.train.seed, step, env.rank))
                for group in optim.param_groups:
                    group["lr"] = lr_at(step, total, cfg.optim)
                images = images.to(device, non_blocking=True)
                mask = masking.make_masks(idx, cfg.mask, model.image_size, seed=cfg.train.seed, salt="train")
                pixel_index = _pixel_subset(cfg, model.image_size, step, device)
                with _autocast(device):
                    out_ = net(images, mask.to(device), cfg.mask.patch, pixel_index)
                optim.zero_grad(set_to_none=True)
                out_.loss.backward()
                if cfg.optim.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                optim.step()
                step += 1
                loss = _mean_over_ranks(out_.loss.detach(), env)
                dt = time.perf_counter() - t0
                train_time += dt
                seen += len(images) * env.world
                psnr = (
                    None
                    if out_.recon is None
                    else psnr_protocols(out_.recon.detach(), images, out_.pixel_mask)["full"].mean().item()
                )
                if env.main:
                    log.write(
                        {
                            "kind": "train",
                            "step": step,
                            "epoch": epoch,
                            "loss": f"{loss:.6f}",
                            "lr": f"{optim.param_groups[0]['lr']:.3e}",
                            "psnr": _fmt(psnr),
                            "images_per_s": f"{len(images) * env.world / dt:.1f}",
                        }
                    )
                    bar.update(step, loss=loss, psnr=psnr, ips=seen / train_time)
                end_of_epoch = step % steps_per_epoch == 0
                if end_of_epoch or step == total or step % cfg.train.ckpt_every == 0:
                    if env.main and (
                        step == total or (end_of_epoch and (step // steps_per_epoch) % cfg.train.val_every == 0)
                    ):
                        val_metrics = validate(model, val, cfg, device)
                        log.write(
                            {
                                "kind": "val",
                                "step": step,
                                "epoch": epoch,
                                **{k: f"{v:.4f}" for k, v in val_metrics.items()},
                            }
                        )
                    if env.main:
                        save_checkpoint(
                            out / CKPT_NAME,
                            model_state=model.state_dict(),
                            optim_state=optim.state_dict(),
                            meta=_meta(cfg, model.family, step, epoch, sha),
                        )
                    _barrier(env)
                if step >= total:
                    break
    summary = {
        "model": cfg.model,
        "steps": step,
        "images_seen_this_session": seen,
        "train_images_per_s": seen / train_time if train_time else None,
        "peak_memory_mb": peak_memory_mb(device),
        "device": str(device),
        "world_size": env.world,
        **val_metrics,
    }
    if env.main:
        log.close()
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary


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
