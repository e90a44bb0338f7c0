"""`minrctl finetune --task segmentation`: mmseg's Feature2Pyramid + UPerHead (+ auxiliary FCNHead), or a light
FCN head on a frozen backbone, on minr encoders; trained by the one training loop, scored by mmseg's IoUMetric.

Regimes: "full" fine-tunes the backbone with layer-decayed AdamW (the MAE mmseg recipe: warm-up then poly);
"frozen" trains only a one-conv FCN head on the last feature map (the cheap dense probe).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
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
from finetune.configs import SegConfig
from finetune.mmseg_config import backbone_levels, segmentor_config
from finetune.report import FinetuneResults, SegEntry, write_results
from finetune.seg_backbone import MinrBackbone  # noqa: F401  (registers the backbone)
from minr.build import encoder_skeleton
from minr.checkpoint import checkpoint_meta
from minr.errors import MinrError
from minr.io import git_sha, locked_dir
from minr.loop import LoopPlan, StepResult, fit, open_run, restore
from minr.optim import layer_decay_groups
from minr.progress import console
from minr.runtime import hardware, resolve_device
from probes.stats import minr_vs_mae

CKPT = "segmentation.safetensors"


def build_segmentor(cfg: SegConfig, ckpt: str, feature: str, num_classes: int) -> torch.nn.Module:
    encoder, _ = encoder_skeleton(ckpt)  # shapes only; MinrBackbone loads the weights
    info = encoder.info()
    if feature == "inr" and not info.dense_levels:
        raise MinrError(
            f"--backbone inr needs per-pixel features; {ckpt} ({info.family}) has none (MINR encoders have)"
        )
    frozen = cfg.regime == "frozen"
    backbone = {
        "type": "MinrBackbone",
        "ckpt": str(ckpt),
        "out_indices": backbone_levels(info, feature=feature, frozen=frozen),
        "feature": feature,
        "frozen": frozen,
        "drop_path_rate": 0.0 if frozen else cfg.drop_path,
    }
    preprocessor = {
        "mean": [0.0] * info.in_chans,
        "std": [255.0] * info.in_chans,
        "bgr_to_rgb": info.in_chans == 3,
        "size_divisor": info.size_divisor,
    }
    with warnings.catch_warnings():  # mmseg's own heads call its deprecated build_loss; nothing for a user to do
        warnings.filterwarnings("ignore", message="``build_loss`` would be deprecated soon", category=UserWarning)
        model = _build(backbone, info, feature, num_classes, frozen, cfg, preprocessor)
    model.init_weights()
    return model


def _build(backbone, info, feature: str, num_classes: int, frozen: bool, cfg: SegConfig, preprocessor):
    return MODELS.build(
        ConfigDict(
            segmentor_config(
                backbone,
                channels=info.dense_width if feature == "inr" else info.width,
                num_classes=num_classes,
                frozen=frozen,
                pyramid=feature == "tokens",
                head_channels=cfg.head_channels,
                aux_channels=cfg.head_channels // 2,
                preprocessor=preprocessor,
            )
        )
    )


def settings(cfg: SegConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for k in ("ckpts", "names", "groups", "seeds", "device", "backbones"):
        d.pop(k)
    return d


def train_segmentor(
    model, dataset, cfg: SegConfig, seed: int, out: Path, device: torch.device, *, resume: bool, progress: bool
):
    """Train one segmentor through the one loop (schedule -> mmseg losses -> backward -> step -> checkpoint);
    exactly resumable. Returns the loop's `FitResult`."""
    bb = model.backbone
    ident = {**settings(cfg), "pretrained": str(bb.ckpt), "feature": bb.feature, "seed": seed}
    with locked_dir(out):
        state = open_run(out / CKPT, identity=ident, resume=resume)
        groups = layer_decay_groups(
            model, bb.encoder, prefix="backbone.encoder.", weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay
        )
        optim = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999))
        start, sha = restore(state, model, optim), git_sha()

        def step_fn(batch, step: int) -> StepResult:
            data = model.data_preprocessor(_to(batch, device), True)
            loss, _ = model.parse_losses(model(**data, mode="loss"))
            return StepResult(loss, len(batch["inputs"]))

        def meta(step: int, epoch: int) -> dict[str, Any]:
            return checkpoint_meta(
                "segmentation",
                model=bb.model_name,
                model_args=bb.model_args,
                family=bb.encoder.family,
                config=ident,
                step=step,
                epoch=epoch,
                git_sha=sha,
                pretrained=str(bb.ckpt),
                seed=seed,
            )

        plan = LoopPlan(
            total=cfg.max_steps,
            batch_size=cfg.batch_size,
            seed=seed,
            lr=cfg.lr,
            schedule="poly",
            warmup_fraction=cfg.warmup_fraction,
            ckpt_every=50,
        )
        return fit(
            model,
            optim,
            dataset,
            step_fn,
            plan,
            ckpt_path=out / CKPT,
            meta=meta,
            device=device,
            start_step=start,
            collate_fn=pseudo_collate,
            progress=progress,
            description=f"segment {out.parent.name}",
        )


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"inputs": [x.to(device) for x in batch["inputs"]], "data_samples": batch["data_samples"]}


@torch.no_grad()
def evaluate(model, dataset, device: torch.device, batch_size: int = 16) -> dict[str, Any]:
    """mmseg's IoUMetric (aAcc, mIoU, mAcc, per-class IoU) plus each image's own mean IoU for paired statistics."""
    model.eval()
    metric = IoUMetric(iou_metrics=["mIoU"], prefix="val")  # compute_metrics is called directly: names only
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


def _pairs(cfg: SegConfig) -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(checkpoint, feature, encoder skeleton, meta) for every combination that exists; per-pixel features of an
    encoder without them are skipped with a note, and a run where none remain is refused."""
    pairs, skipped = [], []
    for ckpt in cfg.ckpts:
        skeleton, meta = encoder_skeleton(ckpt)
        for feature in cfg.backbones:
            if feature == "inr" and not skeleton.info().dense_levels:
                skipped.append(f"{meta['model']}:inr")
                continue
            pairs.append((ckpt, feature, skeleton, meta))
    if not pairs:
        raise MinrError(
            f"nothing to train: {', '.join(skipped)} have no per-pixel features; "
            "add --backbone tokens or a MINR checkpoint"
        )
    if skipped:
        console.print(f"segmentation: skipping {', '.join(skipped)} (no per-pixel features)")
    return pairs


def run_segmentation(
    cfg: SegConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> FinetuneResults:
    """Every checkpoint x backbone feature x seed on one dataset; mIoU/mAcc/aAcc/per-class IoU, a PNG of
    predictions, and per-image IoU compared in pairs (MINR - MAE, bootstrap interval, Wilcoxon)."""
    from finetune.seg_report import save_prediction_grid

    out, device, t0 = Path(out_dir), resolve_device(cfg.device), time.perf_counter()
    info = segdata.resolve(cfg.dataset)
    pairs = _pairs(cfg)
    with locked_dir(out):
        entries, runs = [], {}
        for ckpt, feature, skeleton, meta in pairs:
            kw = {"in_chans": skeleton.in_chans, "max_images": cfg.max_images, "crop": cfg.crop}
            train, val = segdata.build_dataset(info, "train", **kw), segdata.build_dataset(info, "val", **kw)
            name = f"{meta['model']}:{feature}"
            runs[name] = []
            for seed in range(cfg.seeds):
                torch.manual_seed(seed)
                model = build_segmentor(cfg, ckpt, feature, len(info.classes)).to(device)
                run_dir = out / name.replace(":", "_") / f"seed{seed}"
                fitted = train_segmentor(model, train, cfg, seed, run_dir, device, resume=resume, progress=progress)
                runs[name].append((fitted, evaluate(model, val, device)))
            entries.append(_entry(name, ckpt, meta["family"], feature, runs[name]))
        paired = minr_vs_mae(
            [(e.name, e.family, runs[e.name][0][1]["per_image_IoU"]) for e in entries],
            method="segmentation",
            metric="IoU",
        )
        save_prediction_grid(
            val, [(e.name, runs[e.name][0][1]["predictions"]) for e in entries], out / "predictions.png"
        )
        results = FinetuneResults(
            task="segmentation",
            config={**settings(cfg), "seeds": cfg.seeds, "backbones": list(cfg.backbones)},
            entries=entries,
            paired=paired,
            evaluated_images=len(val),
            runtime_s=time.perf_counter() - t0,
            git_sha=git_sha(),
            hardware=hardware(),
            dataset=cfg.dataset,
        )
        arrays = {
            f"{n}|seed{s}|per_image_IoU": ev["per_image_IoU"] for n, rs in runs.items() for s, (_, ev) in enumerate(rs)
        }
        write_results(results, out, arrays)
    return results


def _entry(name: str, ckpt: str, family: str, feature: str, runs: list) -> SegEntry:
    mious = [float(ev["mIoU"]) / 100 for _, ev in runs]
    fitted, first = runs[0]
    return SegEntry(
        name=name,
        ckpt=str(ckpt),
        family=family,
        feature=feature,
        mean=float(np.mean(mious)),
        std=float(np.std(mious)),
        per_seed=mious,
        mAcc=float(first["mAcc"]) / 100,
        aAcc=float(first["aAcc"]) / 100,
        per_class_IoU=first["per_class_IoU"],
        train_images_per_s=fitted.images_per_s,
        first_loss=fitted.losses[0] if fitted.losses else None,
        last_loss=float(np.mean(fitted.losses[-10:])) if fitted.losses else None,
    )
