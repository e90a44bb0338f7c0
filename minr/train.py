"""Pretraining: MINR hypernetworks and MAE under one budget, on CPU, GPU or `torchrun` DDP, through `minr.loop.fit`.

Masks are keyed by (seed, image index), so every model sees the same mask on the same image. A run killed at any
moment and resumed continues exactly (tested), and each run directory is owned by one process at a time.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from minr import masking
from minr.build import build_model
from minr.config import PretrainConfig, to_dict, to_yaml
from minr.data import ImageDataset, data_inputs, load_split
from minr.errors import MinrError
from minr.io import atomic_write_text, output_location, write_json
from minr.loop import FitResult, LoopPlan, StepResult
from minr.metrics import PROTOCOLS, mean_defined, psnr_from_mse, psnr_protocols
from minr.optim import build_optimizer
from minr.parallel import data_parallel
from minr.run import Run, RunSpec, training_run
from minr.runtime import autocast, distributed_device, keyed_generator, peak_memory_mb, resolve_device

CKPT_NAME = "checkpoint.safetensors"
# Keys that may differ when resuming: they change where or how verbosely a run goes, not what it computes.
# How a run executes, not what it computes: a resume may change them.
RESUMABLE_KEYS = frozenset(
    {"train.device", "data.workers", "train.log", "data.root", "train.on_nonfinite", "train.compile"}
)


@torch.no_grad()
def validate(model: nn.Module, data: ImageDataset, cfg: PretrainConfig, device: torch.device) -> dict[str, float]:
    """Mean loss and per-image PSNR under the three protocols, with fixed masks (salt "val"). Images without a
    masked pixel have no masked or pasted PSNR: they are left out of those means and counted (`val_unmasked`)."""
    model.eval()
    n = min(len(data), cfg.train.val_max_images or len(data))
    loader = DataLoader(torch.utils.data.Subset(data, range(n)), batch_size=cfg.train.batch_size)
    psnr: dict[str, list[torch.Tensor]] = {p: [] for p in PROTOCOLS}
    loss_sum = 0.0
    for images, _, idx in loader:
        images = images.to(device)
        mask = masking.make_masks(idx, cfg.mask, data.image_size, seed=cfg.train.seed, salt="val").to(device)
        with autocast(device):
            out = model(images, mask, cfg.mask.patch)
        loss_sum += out.loss.item() * len(images)
        for k, v in psnr_protocols(out.recon, images, out.pixel_mask).items():
            psnr[k].append(v.cpu())
    model.train()
    means = {f"psnr_{k}": mean_defined(torch.cat(v)) for k, v in psnr.items()}
    return {
        "val_loss": loss_sum / n,
        "val_unmasked": means["psnr_masked"][1],
        **{k: mean for k, (mean, _) in means.items()},
    }


# -- logging ----------------------------------------------------------------------------------------------------
FIELDS = [
    *("kind", "step", "epoch", "loss", "lr", "psnr", "images_per_s", "val_loss", "val_unmasked"),
    *(f"psnr_{p}" for p in PROTOCOLS),  # the last field last: a row cut short by a kill lacks it
]


class MetricsLog:
    """metrics.csv (always) and TensorBoard (when asked). On resume, rows past the checkpoint's step are dropped,
    and so is a row that a kill cut short."""

    def __init__(self, out: Path, *, resume_step: int | None, tensorboard: bool) -> None:
        self.path = out / "metrics.csv"
        rows = []
        if resume_step is not None and self.path.exists():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if _row_step(r) is not None and _row_step(r) <= resume_step]
        atomic_write_text(self.path, _csv_text(rows, header=True))
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise MinrError("train.log=tensorboard needs tensorboard: pip install 'minr[tensorboard]'") from None
            self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            f.write(_csv_text([row], header=False))
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("kind", "step", "epoch") and v is not None and v != "":
                    self.tb.add_scalar(f"{row['kind']}/{k}", float(v), int(row["step"]))

    def train_row(self, row: dict[str, Any]) -> None:
        """A row from the training loop, in the file's fixed formats."""
        psnr = row.get("psnr")
        self.write(
            {
                "kind": "train",
                "step": row["step"],
                "epoch": row["epoch"],
                "loss": f"{row['loss']:.6f}",
                "lr": f"{row['lr']:.3e}",
                "psnr": "" if psnr is None else f"{psnr:.3f}",
                "images_per_s": f"{row['images_per_s']:.1f}",
            }
        )

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def run_throughput(path: Path, batch_size: int) -> tuple[float | None, float | None]:
    """Training images/s and seconds over every session of a run, from metrics.csv's per-step rates (a resumed or
    re-entered run keeps the throughput of the steps it trained before)."""
    if not path.is_file():
        return None, None
    with open(path, newline="") as f:
        rates = [float(r["images_per_s"]) for r in csv.DictReader(f) if r["kind"] == "train" and r["images_per_s"]]
    rates = [r for r in rates if r > 0]
    if not rates:
        return None, None
    seconds = sum(batch_size / r for r in rates)
    return len(rates) * batch_size / seconds, seconds


def _row_step(row: dict[str, str]) -> int | None:
    try:
        return int(row["step"]) if row.get(FIELDS[-1]) is not None else None  # a cut row lacks its last fields
    except (TypeError, ValueError):
        return None


def _csv_text(rows: list[dict[str, Any]], *, header: bool) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, restval="", extrasaction="ignore")
    if header:
        w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# -- the run ----------------------------------------------------------------------------------------------------
def prepare(cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False) -> None:
    """Every check a pretraining run makes before it starts work, writing nothing: the device, the model and its
    mask (built on the meta device, through the same `build_model`), the data's splits and batch, and the run
    directory (no run there unless resuming one with the same settings). `minrctl pretrain --dry-run` calls it;
    `pretrain` makes the same checks (`_splits`, then `RunSpec.open` in the locked folder), so a dry run refuses
    what the real run would refuse."""
    _, _, fingerprints = _splits(cfg)
    run_spec(cfg, out_dir).open(resume=resume, fingerprints=fingerprints)


def _splits(cfg: PretrainConfig) -> tuple[ImageDataset, ImageDataset, dict[str, str]]:
    """The device and the model checked, the training and validation splits at the model's size, and their
    content fingerprints."""
    resolve_device(cfg.train.device)
    with torch.device("meta"):
        skeleton = build_model(cfg)
    size, chans = skeleton.image_size, skeleton.in_chans
    data = load_split(cfg.data, "train", image_size=size, in_chans=chans)
    val = load_split(cfg.data, "val", image_size=size, in_chans=chans)
    if len(data) < cfg.train.batch_size:
        raise MinrError(
            f"{cfg.data.name}: {len(data)} training images, fewer than one batch of "
            f"{cfg.train.batch_size}; lower --set train.batch_size"
        )
    return data, val, {"train": data.fingerprint(), "val": val.fingerprint()}


def run_spec(cfg: PretrainConfig, out_dir: str | Path) -> RunSpec:
    return RunSpec(Path(out_dir) / CKPT_NAME, kind="pretrain", identity=to_dict(cfg), loose=RESUMABLE_KEYS)


def loop_plan(cfg: PretrainConfig, steps_per_epoch: int) -> LoopPlan:
    """The loop's plan: `train.epochs` and `train.max_steps` (whichever ends first), the optimiser's schedule."""
    total = int(min((cfg.train.epochs or math.inf) * steps_per_epoch, cfg.train.max_steps or math.inf))
    return LoopPlan(
        total=total,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        lr=cfg.optim.lr,
        schedule=cfg.optim.schedule,
        warmup_fraction=cfg.optim.warmup_fraction,
        decay_at=cfg.optim.decay_at,
        clip_grad=cfg.optim.clip_grad,
        ckpt_every=cfg.train.ckpt_every,
        val_every=cfg.train.val_every,
        on_nonfinite=cfg.train.on_nonfinite,
        keep=cfg.train.keep_checkpoints,
    )


def pretrain(
    cfg: PretrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Pretrain `cfg.model` and write checkpoint, metrics.csv, config.yaml and summary.json into `out_dir`."""
    device, env = distributed_device(cfg.train.device)
    if cfg.train.batch_size % env.world:
        raise MinrError(f"train.batch_size {cfg.train.batch_size} must divide among {env.world} processes")
    out = output_location(out_dir, inputs=data_inputs(cfg.data))
    data, val, fingerprints = _splits(cfg)
    with training_run(run_spec(cfg, out), resume=resume, fingerprints=fingerprints, lock=env.main) as run:
        torch.manual_seed(cfg.train.seed)  # the model's initialisation
        model = build_model(cfg).to(device)
        rng = {"scheme": "keyed", "seed": cfg.train.seed}  # every draw is keyed by this seed (`minr.runtime`)
        record = {"model": cfg.model, "model_args": cfg.model_args, "family": model.family, "rng": rng}
        run.start(model, build_optimizer(model, cfg.optim), record=record)
        result, val_metrics = _train(cfg, run, data, val, device, env, progress)
        summary = {
            "model": cfg.model,
            "steps": result.step,
            "images_seen_this_session": result.images,
            **_throughput(out, cfg, result),
            "peak_memory_mb": peak_memory_mb(device),
            "device": str(device),
            "world_size": env.world,
            **val_metrics,
        }
        if env.main:
            write_json(out / "summary.json", summary)
    return summary


def _train(
    cfg: PretrainConfig, run: Run, data: ImageDataset, val: ImageDataset, device: torch.device, env, progress: bool
) -> tuple[FitResult, dict[str, float]]:
    """The started run trained to its end, rank 0 logging and validating; returns the loop's result and the last
    validation's metrics."""
    model, out, log, val_metrics = run.model, run.spec.path.parent, None, {}
    if env.main:
        atomic_write_text(out / "config.yaml", to_yaml(cfg) + f"# git_sha: {run.sha}\n")
        log = MetricsLog(out, resume_step=run.resume_step, tensorboard=cfg.train.log == "tensorboard")

    def evaluate(step: int, epoch: int) -> None:
        if env.main:
            val_metrics.update(validate(model, val, cfg, device))
            cells = {k: v if isinstance(v, int) else f"{v:.4f}" for k, v in val_metrics.items()}
            log.write({"kind": "val", "step": step, "epoch": epoch, **cells})

    if cfg.train.compile:
        model.compile()  # in place: the module and its state dict keep their names
    net = data_parallel(model, env)
    try:
        result = run.fit(
            data,
            masked_step(cfg, net, model.image_size, device, len(data) // cfg.train.batch_size),
            loop_plan(cfg, len(data) // cfg.train.batch_size),
            device=device,
            env=env,
            workers=cfg.data.workers,
            evaluate=evaluate,
            log=log.train_row if log else None,
            progress=progress,
            description=f"pretrain {cfg.model}",
        )
        if env.main and not val_metrics:  # resumed a finished run: validate again so the summary stays complete
            val_metrics = validate(model, val, cfg, device)
    finally:
        if log is not None:
            log.close()
    return result, val_metrics


def masked_step(cfg: PretrainConfig, net: nn.Module, size: int, device: torch.device, per_epoch: int):
    """The step function of pretraining: a batch's keyed masks, the pixels rendered this step, GINR's coordinate
    noise, and the masked-reconstruction loss of `net` (the model, or its DDP wrapper). Masks are keyed by image
    and epoch: an image is masked anew each time it is seen, as MAE draws them (the first epoch's salt is the
    plain "train", so one-epoch runs keep their masks)."""

    def step_fn(batch, step: int) -> StepResult:
        images, _, idx = batch
        images = images.to(device, non_blocking=True)
        epoch = step // per_epoch
        salt = "train" if epoch == 0 else f"train/epoch{epoch}"
        mask = masking.make_masks(idx, cfg.mask, size, seed=cfg.train.seed, salt=salt).to(device)
        extra = {
            "pixel_index": pixel_subset(cfg, size, step, device),
            "coord_noise": coord_noise(cfg, idx, size, step, device),
        }
        out = net(images, mask, cfg.mask.patch, **{k: v for k, v in extra.items() if v is not None})
        metrics = {} if out.recon is None else {"psnr": batch_psnr(out.recon.detach(), images)}
        return StepResult(out.loss, len(images), metrics)

    return step_fn


def _throughput(out: Path, cfg: PretrainConfig, result: FitResult) -> dict[str, float | None]:
    rate, seconds = run_throughput(out / "metrics.csv", cfg.train.batch_size)
    return {"train_images_per_s": rate if rate is not None else result.images_per_s, "train_seconds": seconds}


def batch_psnr(recon: torch.Tensor, images: torch.Tensor) -> float:
    """Mean per-image full-image PSNR of a training batch (the progress bar's figure; val reports all three)."""
    return psnr_from_mse(((recon.float().clamp(0, 1) - images) ** 2).flatten(1).mean(1)).mean().item()


def pixel_subset(cfg: PretrainConfig, size: int, step: int, device: torch.device) -> torch.Tensor | None:
    """A random subset of pixel indices for this step (`train.render_fraction` < 1), shared by the batch."""
    if cfg.train.render_fraction >= 1:
        return None
    n = size * size
    g = keyed_generator(cfg.train.seed, "pixels", step)
    return torch.randperm(n, generator=g)[: max(1, int(n * cfg.train.render_fraction))].to(device)


def coord_noise(
    cfg: PretrainConfig, idx: torch.Tensor, size: int, step: int, device: torch.device
) -> torch.Tensor | None:
    """GINR's "coordwise" training noise: every pixel's coordinates moved by up to half a pixel along each axis,
    (B, H*W, 2); keyed by (seed, step, image index), so resume and DDP stay exact."""
    if cfg.train.coord_noise == "none":
        return None
    u = [torch.rand(size * size, 2, generator=keyed_generator(cfg.train.seed, f"coords/{step}", int(i))) for i in idx]
    return ((torch.stack(u) - 0.5) * (2 / size)).to(device)
