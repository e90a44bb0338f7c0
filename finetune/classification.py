"""`minrctl finetune --task classification`: the MAE fine-tuning recipe scaled to the data, for every
checkpoint and seed, with exact resume and the paired MINR - MAE comparison of the probes."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import DataLoader

from finetune.classifier import TOKEN_KINDS, EncoderClassifier, freeze_all_but_last, layer_decay_groups
from minr.build import encoder_skeleton, model_from_checkpoint
from minr.checkpoint import load_checkpoint, read_meta, save_checkpoint
from minr.config import DataConfig, OptimConfig
from minr.data import load_split
from minr.errors import MinrError
from minr.progress import TrainProgress
from minr.train import epoch_batches, lr_at, resolve_device, step_seed

CKPT = "finetune.safetensors"


@dataclass(frozen=True)
class FinetuneConfig:
    ckpts: tuple[str, ...]
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    warmup_fraction: float = 0.1
    drop_path: float = 0.1
    label_smoothing: float = 0.1
    mixup: float = 0.0
    cutmix: float = 0.0
    trainable_blocks: int | None = None
    kind: str | None = None
    seeds: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise MinrError("give at least one --ckpt")
        for name in ("epochs", "batch_size", "seeds"):
            if getattr(self, name) < 1:
                raise MinrError(f"--{name.replace('_', '-')} must be >= 1")
        if not 0 < self.layer_decay <= 1:
            raise MinrError(f"--layer-decay must be in (0, 1], got {self.layer_decay}")


def _build(cfg: FinetuneConfig, ckpt: str, num_classes: int, device: torch.device) -> EncoderClassifier:
    encoder, _, _ = model_from_checkpoint(ckpt, drop_path_rate=cfg.drop_path)
    model = EncoderClassifier(encoder, num_classes, kind=cfg.kind or TOKEN_KINDS[encoder.family][0])
    freeze_all_but_last(model, cfg.trainable_blocks)
    return model.to(device)


@torch.no_grad()
def predict(model: EncoderClassifier, data, device: torch.device, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = [model(x.to(device)).argmax(1).cpu() for x, _, _ in DataLoader(data, batch_size=batch_size)]
    return torch.cat(out).numpy()


def finetune_one(
    cfg: FinetuneConfig, ckpt: str, seed: int, out: Path, *, resume: bool, progress: bool
) -> dict[str, Any]:
    """Fine-tune one checkpoint with one seed; checkpoints in `out`, resumable exactly."""
    device = resolve_device(cfg.device)
    size = _size(ckpt)
    train, val, test = (load_split(cfg.data, s, **size) for s in ("train", "val", "test"))
    if train.multilabel:
        raise MinrError(f"{cfg.data.name} has multi-label attributes; classification needs one label per image")
    num_classes = len(train.classes)
    torch.manual_seed(seed)
    model = _build(cfg, ckpt, num_classes, device)
    optim = torch.optim.AdamW(
        layer_decay_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay),
        betas=(0.9, 0.999),
    )
    steps_per_epoch = len(train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise MinrError(f"{len(train)} training images are fewer than one batch of {cfg.batch_size}")
    total = min(cfg.epochs * steps_per_epoch, cfg.max_steps or 10**12)
    sched = OptimConfig(lr=1.0, schedule="cosine", warmup_fraction=cfg.warmup_fraction)
    mixup = (
        Mixup(
            mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
        )
        if cfg.mixup or cfg.cutmix
        else None
    )
    out.mkdir(parents=True, exist_ok=True)
    step = _resume(out, model, optim, cfg, ckpt, seed) if resume else _fresh(out)
    seen, busy = 0, 0.0
    with TrainProgress(total, start=step, enabled=progress, description=f"finetune {out.parent.name}") as bar:
        while step < total:
            epoch = step // steps_per_epoch
            batches = epoch_batches(len(train), cfg.batch_size, epoch, seed)[step % steps_per_epoch :]
            for x, y, _ in DataLoader(train, batch_sampler=batches):
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(seed, step, 0))
                np.random.seed(step_seed(seed, step, 0) % 2**32)  # timm's Mixup draws from numpy
                for g in optim.param_groups:
                    g["lr"] = cfg.lr * g["lr_scale"] * lr_at(step, total, sched)
                model.train()
                x, y = x.to(device), y.to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    if mixup is not None:
                        x, soft = mixup(x, y)
                        loss = SoftTargetCrossEntropy()(model(x).float(), soft)
                    else:
                        loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.label_smoothing)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                step += 1
                busy += time.perf_counter() - t0
                seen += len(x)
                bar.update(step, loss=loss.item(), psnr=None, ips=seen / busy)
                if step % steps_per_epoch == 0 or step == total:
                    save_checkpoint(
                        out / CKPT,
                        model_state=model.state_dict(),
                        optim_state=optim.state_dict(),
                        meta=_meta(cfg, ckpt, seed, step),
                    )
                if step >= total:
                    break
    pred = predict(model, test, device)
    val_acc = float((predict(model, val, device) == val.source.labels).mean())
    return {
        "predictions": pred,
        "labels": test.source.labels,
        "test_accuracy": float((pred == test.source.labels).mean()),
        "val_accuracy": val_acc,
        "steps": step,
        "train_images_per_s": seen / busy if busy else None,
    }


def _size(ckpt: str) -> dict[str, int]:
    model, _ = encoder_skeleton(ckpt)
    return {"image_size": model.image_size, "in_chans": model.in_chans}


def _meta(cfg: FinetuneConfig, ckpt: str, seed: int, step: int) -> dict[str, Any]:
    return {"kind": "finetune", "config": _cfg_dict(cfg), "pretrained": str(ckpt), "seed": seed, "step": step}


def _cfg_dict(cfg: FinetuneConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d.pop("ckpts")
    d.pop("seeds")
    d.pop("device")
    return d


def _fresh(out: Path) -> int:
    if (out / CKPT).exists():
        raise MinrError(f"{out} already holds a fine-tuning run; pass --resume or choose another --out")
    return 0


def _resume(out: Path, model, optim, cfg: FinetuneConfig, ckpt: str, seed: int) -> int:
    if not (out / CKPT).exists():
        return 0
    c = load_checkpoint(out / CKPT)
    if c.meta.get("config") != _cfg_dict(cfg) or c.meta.get("pretrained") != str(ckpt):
        raise MinrError(
            f"--resume into {out}: it was fine-tuned with other settings or another checkpoint; "
            "use the same options or a new --out"
        )
    model.load_state_dict(c.model_state)
    optim.load_state_dict(c.optim_state)
    return c.meta["step"]


def _name(ckpt: str, taken: set[str]) -> str:
    name = read_meta(ckpt).get("model", Path(ckpt).stem)
    return f"{Path(ckpt).parent.name}/{name}" if name in taken else name


def run_finetune(
    cfg: FinetuneConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Every checkpoint x seed; then accuracy mean ± std and the paired MINR - MAE comparison (seed 0)."""
    from finetune.report import write_results
    from probes.stats import compare

    out, t0 = Path(out_dir), time.perf_counter()
    entries, taken = [], set()
    for ckpt in cfg.ckpts:
        name = _name(ckpt, taken)
        taken.add(name)
        runs = [
            finetune_one(cfg, ckpt, s, out / name.replace("/", "_") / f"seed{s}", resume=resume, progress=progress)
            for s in range(cfg.seeds)
        ]
        accs = [r["test_accuracy"] for r in runs]
        entries.append(
            {
                "name": name,
                "ckpt": str(ckpt),
                "family": read_meta(ckpt)["family"],
                "mean": float(np.mean(accs)),
                "std": float(np.std(accs)),
                "per_seed": accs,
                "val_accuracy": [r["val_accuracy"] for r in runs],
                "steps": runs[0]["steps"],
                "train_images_per_s": runs[0]["train_images_per_s"],
                "_runs": runs,
            }
        )
    labels = entries[0]["_runs"][0]["labels"]
    paired = [
        {
            "a": a["name"],
            "b": b["name"],
            "method": "finetune",
            **compare(a["_runs"][0]["predictions"] == labels, b["_runs"][0]["predictions"] == labels),
        }
        for a in entries
        if a["family"] == "minr"
        for b in entries
        if b["family"] == "mae"
    ]
    results = {
        "task": "classification",
        "config": {**_cfg_dict(cfg), "seeds": cfg.seeds},
        "entries": entries,
        "paired": paired,
        "test_images": len(labels),
        "runtime_s": time.perf_counter() - t0,
    }
    write_results(results, out, labels)
    return results
