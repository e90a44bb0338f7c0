"""`minrctl finetune --task segmentation`: mmseg's Feature2Pyramid + UPerHead (+ auxiliary FCNHead), or a light
FCN head on a frozen backbone, on minr encoders; trained by a plain PyTorch loop, scored by mmseg's IoUMetric.

Regimes: "full" fine-tunes the backbone with layer-decayed AdamW (the MAE mmseg recipe: warm-up then poly);
"frozen" trains only a one-conv FCN head on the last feature map (the cheap dense probe).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import ConfigDict
from mmengine.dataset import pseudo_collate
from mmseg.evaluation import IoUMetric
from mmseg.registry import MODELS
from torch.utils.data import DataLoader

from finetune import segdata
from finetune.seg_backbone import MinrBackbone  # noqa: F401  (registers the backbone)
from minr.build import encoder_skeleton
from minr.checkpoint import load_checkpoint, save_checkpoint
from minr.errors import MinrError
from minr.progress import TrainProgress
from minr.train import epoch_batches, resolve_device, step_seed

CKPT = "segmentation.safetensors"
NORM = {"type": "BN", "requires_grad": True}  # SyncBN in mmseg's configs; BN runs on one CPU process


@dataclass(frozen=True)
class SegConfig:
    ckpts: tuple[str, ...]
    data_root: str
    iters: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    layer_decay: float = 0.65
    warmup_fraction: float = 0.1
    drop_path: float = 0.1
    regime: str = "full"
    backbones: tuple[str, ...] = ("tokens",)
    head_channels: int = 64
    crop: int | None = None
    seeds: int = 1
    max_images: int | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.regime not in ("full", "frozen"):
            raise MinrError(f"--regime must be full or frozen, got {self.regime!r}")
        if set(self.backbones) - {"tokens", "inr"}:
            raise MinrError(f"--backbone must be tokens or inr, got {self.backbones}")
        if self.iters < 1 or self.batch_size < 1:
            raise MinrError("--max-steps and --batch-size must be >= 1")


def out_indices(depth: int, levels: int = 4) -> tuple[int, ...]:
    """Evenly spaced blocks ending with the last, e.g. depth 4 -> (0, 1, 2, 3), depth 12 -> (2, 5, 8, 11)."""
    return tuple(round((i + 1) * depth / levels) - 1 for i in range(levels))


def segmentor_config(
    backbone: dict[str, Any],
    *,
    size_divisor: int,
    channels: int,
    num_classes: int,
    in_chans: int,
    regime: str,
    feature: str,
    head_channels: int,
    ignore_index: int = 255,
) -> dict[str, Any]:
    """An mmseg EncoderDecoder config around a MinrBackbone."""
    ce = {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0}
    common = {"num_classes": num_classes, "norm_cfg": NORM, "align_corners": False, "ignore_index": ignore_index}
    cfg = {
        "type": "EncoderDecoder",
        "backbone": backbone,
        "train_cfg": {},
        "test_cfg": {"mode": "whole"},
        "data_preprocessor": {
            "type": "SegDataPreProcessor",
            "mean": [0.0] * in_chans,
            "std": [255.0] * in_chans,
            "bgr_to_rgb": in_chans == 3,
            "pad_val": 0,
            "seg_pad_val": ignore_index,
            "size_divisor": size_divisor,
        },
    }
    if regime == "frozen":
        cfg["decode_head"] = {
            "type": "FCNHead",
            "in_channels": channels,
            "in_index": 0,
            "channels": head_channels,
            "num_convs": 1,
            "concat_input": False,
            "dropout_ratio": 0.1,
            "loss_decode": ce,
            **common,
        }
        return cfg
    if feature == "tokens":
        cfg["neck"] = {"type": "Feature2Pyramid", "embed_dim": channels, "rescales": [4, 2, 1, 0.5], "norm_cfg": NORM}
    cfg["decode_head"] = {
        "type": "UPerHead",
        "in_channels": [channels] * 4,
        "in_index": [0, 1, 2, 3],
        "pool_scales": (1, 2, 3, 6),
        "channels": head_channels,
        "dropout_ratio": 0.1,
        "loss_decode": ce,
        **common,
    }
    cfg["auxiliary_head"] = {
        "type": "FCNHead",
        "in_channels": channels,
        "in_index": 2,
        "channels": head_channels // 2,
        "num_convs": 1,
        "concat_input": False,
        "dropout_ratio": 0.1,
        "loss_decode": {**ce, "loss_weight": 0.4},
        **common,
    }
    return cfg


def build_segmentor(cfg: SegConfig, ckpt: str, feature: str, num_classes: int) -> torch.nn.Module:
    encoder, _ = encoder_skeleton(ckpt)  # shapes only; MinrBackbone loads the weights
    if feature == "inr" and encoder.family != "minr":
        raise MinrError(f"--backbone inr needs a MINR checkpoint; {ckpt} is {encoder.family}")
    depth = len(encoder.blocks)
    levels = (3,) if feature == "inr" else (depth - 1,)
    if cfg.regime == "full":
        levels = (0, 1, 2, 3) if feature == "inr" else out_indices(depth)
    backbone = {
        "type": "MinrBackbone",
        "ckpt": str(ckpt),
        "out_indices": levels,
        "feature": feature,
        "frozen": cfg.regime == "frozen",
        "drop_path_rate": cfg.drop_path if cfg.regime == "full" else 0.0,
    }
    channels = encoder.layer_shapes[0][1] if feature == "inr" else encoder.embed_dim
    model = MODELS.build(
        ConfigDict(
            segmentor_config(
                backbone,
                size_divisor=getattr(encoder, "patch_size", 1),  # MAE needs whole patches; MINR's conv takes any size
                channels=channels,
                num_classes=num_classes,
                in_chans=encoder.in_chans,
                regime=cfg.regime,
                feature=feature,
                head_channels=cfg.head_channels,
            )
        )
    )
    model.init_weights()
    return model


def param_groups(model: torch.nn.Module, cfg: SegConfig) -> list[dict[str, Any]]:
    """Layer-decayed AdamW groups for the backbone (MAE mmseg recipe); heads and neck at the full rate."""
    enc = model.backbone.encoder
    top = len(enc.blocks) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = enc.layer_id(name.removeprefix("backbone.encoder.")) if name.startswith("backbone.") else top
        decay = p.ndim >= 2 and "token" not in name and "pos_embed" not in name
        g = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "weight_decay": cfg.weight_decay if decay else 0.0,
                "lr_scale": cfg.layer_decay ** (top - layer),
            },
        )
        g["params"].append(p)
    return list(groups.values())


def lr_factor(step: int, total: int, warmup_fraction: float) -> float:
    """Linear warm-up, then poly decay (power 1) to zero: mmseg's schedule."""
    warmup = int(warmup_fraction * total)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup))


def train_segmentor(
    model, dataset, cfg: SegConfig, seed: int, out: Path, device: torch.device, *, resume: bool, progress: bool
) -> dict[str, Any]:
    """The explicit loop: schedule -> forward (mmseg losses) -> backward -> step -> checkpoint. Exactly resumable."""
    optim = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.999))
    per_epoch = len(dataset) // cfg.batch_size
    if per_epoch == 0:
        raise MinrError(f"{len(dataset)} training images are fewer than one batch of {cfg.batch_size}")
    step = _resume(out, model, optim, cfg, seed) if resume else _fresh(out)
    seen, busy, losses = 0, 0.0, []
    with TrainProgress(cfg.iters, start=step, enabled=progress, description=f"segment {out.parent.name}") as bar:
        while step < cfg.iters:
            epoch = step // per_epoch
            batches = epoch_batches(len(dataset), cfg.batch_size, epoch, seed)[step % per_epoch :]
            for batch in DataLoader(dataset, batch_sampler=batches, collate_fn=pseudo_collate):
                t0 = time.perf_counter()
                torch.manual_seed(step_seed(seed, step, 0))
                for g in optim.param_groups:
                    g["lr"] = cfg.lr * g["lr_scale"] * lr_factor(step, cfg.iters, cfg.warmup_fraction)
                model.train()
                data = model.data_preprocessor(_to(batch, device), True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    loss, _ = model.parse_losses(model(**data, mode="loss"))
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                step += 1
                busy += time.perf_counter() - t0
                seen += len(batch["inputs"])
                losses.append(loss.item())
                bar.update(step, loss=loss.item(), psnr=None, ips=seen / busy)
                if step % 50 == 0 or step == cfg.iters:
                    save_checkpoint(
                        out / CKPT,
                        model_state=model.state_dict(),
                        optim_state=optim.state_dict(),
                        meta={"kind": "segmentation", "config": _cfg_key(cfg), "seed": seed, "step": step},
                    )
                if step >= cfg.iters:
                    break
    return {"losses": losses, "train_images_per_s": seen / busy if busy else None, "steps": step}


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"inputs": [x.to(device) for x in batch["inputs"]], "data_samples": batch["data_samples"]}


def _cfg_key(cfg: SegConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for k in ("ckpts", "seeds", "device", "backbones"):
        d.pop(k)
    return d


def _fresh(out: Path) -> int:
    if (out / CKPT).exists():
        raise MinrError(f"{out} already holds a segmentation run; pass --resume or choose another --out")
    return 0


def _resume(out: Path, model, optim, cfg: SegConfig, seed: int) -> int:
    if not (out / CKPT).exists():
        return 0
    c = load_checkpoint(out / CKPT)
    if c.meta.get("config") != _cfg_key(cfg) or c.meta.get("seed") != seed:
        raise MinrError(f"--resume into {out}: it was trained with other settings; use them or a new --out")
    model.load_state_dict(c.model_state)
    optim.load_state_dict(c.optim_state)
    return c.meta["step"]


@torch.no_grad()
def evaluate(model, dataset, device: torch.device, batch_size: int = 16) -> dict[str, Any]:
    """mmseg's IoUMetric (aAcc, mIoU, mAcc, per-class IoU) plus each image's own mean IoU for paired statistics."""
    model.eval()
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = dataset.metainfo
    preds = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=pseudo_collate):
        outputs = model(**model.data_preprocessor(_to(batch, device), False), mode="predict")
        metric.process(batch, [o.to_dict() for o in outputs])
        preds += [o.pred_sem_seg.data[0].cpu().numpy() for o in outputs]
    totals = [sum(r[i] for r in metric.results) for i in range(4)]
    per_class = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    per_image = []
    for inter, union, _, _ in metric.results:
        present = union > 0
        per_image.append(float((inter[present] / union[present]).mean()) if present.any() else math.nan)
    summary = metric.compute_metrics(metric.results)  # percentages, as mmseg reports them
    return {
        "mIoU": summary["mIoU"],
        "mAcc": summary["mAcc"],
        "aAcc": summary["aAcc"],
        "per_class_IoU": dict(zip(dataset.metainfo["classes"], np.nan_to_num(per_class["IoU"]).tolist(), strict=True)),
        "per_image_IoU": np.asarray(per_image),
        "predictions": preds,
    }


def run_segmentation(
    cfg: SegConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Every checkpoint x backbone feature x seed on one dataset; mIoU/mAcc/aAcc/per-class IoU, a PNG of
    predictions, and per-image IoU compared in pairs (MINR - MAE, bootstrap interval)."""
    from finetune.report import write_results
    from finetune.seg_report import save_prediction_grid
    from probes.stats import paired_bootstrap

    out, device, t0 = Path(out_dir), resolve_device(cfg.device), time.perf_counter()
    info = segdata.resolve(cfg.data_root)
    entries = []
    for ckpt in cfg.ckpts:
        skeleton, meta = encoder_skeleton(ckpt)
        in_chans = skeleton.in_chans
        train = segdata.build_dataset(info, "train", in_chans=in_chans, max_images=cfg.max_images, crop=cfg.crop)
        val = segdata.build_dataset(info, "val", in_chans=in_chans, max_images=cfg.max_images, crop=cfg.crop)
        for feature in cfg.backbones:
            if feature == "inr" and meta["family"] != "minr":
                continue  # per-pixel INR features exist for MINR only
            name = f"{meta['model']}:{feature}"
            runs = []
            for seed in range(cfg.seeds):
                torch.manual_seed(seed)
                model = build_segmentor(cfg, ckpt, feature, len(info.classes)).to(device)
                run_dir = out / f"{name.replace(':', '_')}" / f"seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                stats = train_segmentor(model, train, cfg, seed, run_dir, device, resume=resume, progress=progress)
                runs.append({**stats, **evaluate(model, val, device)})
            entries.append(_seg_entry(name, ckpt, meta["family"], runs))
    paired = []
    for a in (e for e in entries if e["family"] == "minr"):
        for b in (e for e in entries if e["family"] == "mae"):
            d, lo, hi = paired_bootstrap(a["_runs"][0]["per_image_IoU"], b["_runs"][0]["per_image_IoU"])
            paired.append(
                {"a": a["name"], "b": b["name"], "method": "per-image IoU", "diff": d, "ci_low": lo, "ci_high": hi}
            )
    save_prediction_grid(val, [(e["name"], e["_runs"][0]["predictions"]) for e in entries], out / "predictions.png")
    for e in entries:
        for r in e["_runs"]:
            r.pop("predictions")
            r["per_image_IoU"] = r["per_image_IoU"].tolist()
    results = {
        "task": "segmentation",
        "dataset": cfg.data_root,
        "config": {**_cfg_key(cfg), "seeds": cfg.seeds, "backbones": cfg.backbones},
        "entries": entries,
        "paired": paired,
        "val_images": len(val),
        "runtime_s": time.perf_counter() - t0,
    }
    write_results(results, out, columns=(("mean", "mIoU"), ("mAcc", "mAcc"), ("aAcc", "aAcc")))
    return results


def _seg_entry(name: str, ckpt: str, family: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    mious = [r["mIoU"] / 100 for r in runs]
    return {
        "name": name,
        "ckpt": str(ckpt),
        "family": family,
        "mean": float(np.mean(mious)),
        "std": float(np.std(mious)),
        "per_seed": mious,
        "mAcc": runs[0]["mAcc"] / 100,
        "aAcc": runs[0]["aAcc"] / 100,
        "per_class_IoU": runs[0]["per_class_IoU"],
        "train_images_per_s": runs[0]["train_images_per_s"],
        # losses of this session only: a resumed run that had finished has none
        "first_loss": runs[0]["losses"][0] if runs[0]["losses"] else None,
        "last_loss": float(np.mean(runs[0]["losses"][-10:])) if runs[0]["losses"] else None,
        "_runs": runs,
    }
