"""`minrctl finetune --task segmentation`: mmseg's Feature2Pyramid + UPerHead (+ auxiliary FCNHead), or a light
FCN head on a frozen backbone, on minr encoders; trained by the one training loop, scored by mmseg's IoUMetric.

Regimes: "full" fine-tunes the backbone with layer-decayed AdamW (the MAE mmseg recipe: warm-up then poly);
"frozen" trains only a one-conv FCN head on the backbone's map (the cheap dense probe). Backbone features: token
maps, per-pixel INR activations (MINR), both, or the image itself (the floor: the same head with no encoder).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.dataset import pseudo_collate
from mmseg.evaluation import IoUMetric
from timm.optim import param_groups_weight_decay
from torch.utils.data import DataLoader, Subset

from finetune import segdata
from finetune.configs import DENSE_FEATURES, SegConfig
from finetune.mmseg_config import backbone_levels, build_model, preprocessor, segmentor_config
from finetune.report import run_name
from finetune.seg_backbone import SEGMENTOR_ENCODER_PREFIX, dense_channels
from finetune.seg_results import FLOOR_FAMILY, SegEntry, SegResults
from minr.build import encoder_skeleton
from minr.errors import MinrError
from minr.io import git_sha
from minr.loop import LoopPlan, StepResult
from minr.optim import adamw, layer_decay_groups
from minr.parallel import data_parallel, gather_items, shard
from minr.progress import console
from minr.run import RunSpec, main_locked, training_run
from minr.runtime import SINGLE, Dist, distributed_device, hardware
from probes.stats import compare, minr_vs_mae

CKPT = "segmentation.safetensors"


@dataclass(frozen=True)
class Arm:
    """One model x feature to train: a checkpoint's encoder, or the raw-pixel floor (no checkpoint)."""

    name: str
    ckpt: str | None
    model: str
    family: str
    feature: str
    info: Any  # the encoder's EncoderInfo; for the floor, that of the encoders it is the floor of
    inr_layers: tuple[int, ...] = ()
    inr_fit_steps: int = 0
    group: str | None = None  # MINR and MAE entries are paired within a group (None: with every other group)


def plan_arms(cfg: SegConfig) -> list[Arm]:
    """Every checkpoint x backbone feature that exists, then one pixel floor per input channel count when asked.
    Per-pixel features of an encoder without them are skipped with a note; a run where none remain is refused.
    Arms are named `<checkpoint's name>:<feature>`: the given `names`, else the model's (made unique)."""
    arms, skipped, infos, taken = [], [], {}, set()
    names, groups = cfg.names or (None,) * len(cfg.ckpts), cfg.groups or (None,) * len(cfg.ckpts)
    for ckpt, given, group in zip(cfg.ckpts, names, groups, strict=True):
        skeleton, meta = encoder_skeleton(ckpt)
        run, _ = run_name(ckpt, taken, given)
        info = skeleton.info()
        infos.setdefault(info.in_chans, info)
        for feature in (f for f in cfg.backbones if f != "pixels"):
            if feature in DENSE_FEATURES and not info.dense_levels:
                skipped.append(f"{run}:{feature}")
                continue
            layers = _inr_layers(cfg, info, ckpt) if feature in DENSE_FEATURES else ()
            suffix = f"[{','.join(map(str, layers))}]" if layers else ""
            fit = cfg.inr_fit_steps if layers else 0
            name = f"{run}:{feature}{suffix}"
            arms.append(Arm(name, ckpt, meta["model"], meta["family"], feature, info, layers, fit, group))
    if "pixels" in cfg.backbones:
        for c, info in infos.items():
            name = "pixels" if len(infos) == 1 else f"pixels:{c}ch"
            arms.append(Arm(name, None, "pixels", FLOOR_FAMILY, "pixels", info))
    if not arms:
        raise MinrError(
            f"nothing to train: {', '.join(skipped)} have no per-pixel features; "
            "add --backbone tokens or a MINR checkpoint"
        )
    if skipped:
        console.print(f"segmentation: skipping {', '.join(skipped)} (no per-pixel features)")
    return arms


def _inr_layers(cfg: SegConfig, info, ckpt: str) -> tuple[int, ...]:
    layers = cfg.inr_layers if cfg.inr_layers is not None else info.dense_default
    bad = [i for i in layers if not 0 <= i < info.dense_levels]
    if bad:
        raise MinrError(
            f"--inr-layers {bad[0]} does not exist: {ckpt} has INR hidden layers 0..{info.dense_levels - 1}"
        )
    return tuple(sorted(set(layers)))


def build_segmentor(cfg: SegConfig, arm: Arm, num_classes: int) -> torch.nn.Module:
    frozen, info = cfg.regime == "frozen", arm.info
    if arm.feature == "pixels":
        backbone = {"type": "PixelBackbone", "in_chans": info.in_chans, "pyramid": True}
        divisor = 1
    else:
        backbone = {
            "type": "MinrBackbone",
            "ckpt": str(arm.ckpt),
            "out_indices": backbone_levels(info, frozen=frozen or arm.feature != "tokens"),
            "feature": arm.feature,
            "inr_layers": arm.inr_layers or None,
            "inr_fit_steps": arm.inr_fit_steps,
            "pyramid": arm.feature != "tokens",
            "frozen": frozen,
            "drop_path_rate": 0.0 if frozen else cfg.drop_path,
        }
        divisor = info.size_divisor
    model = build_model(
        segmentor_config(
            backbone,
            channels=dense_channels(info, arm.feature, arm.inr_layers),
            num_classes=num_classes,
            frozen=frozen,
            token_pyramid=arm.feature == "tokens",
            head_channels=cfg.head_channels,
            aux_channels=cfg.head_channels // 2,
            data_preprocessor=preprocessor(info.in_chans, divisor),
        )
    )
    model.init_weights()
    return model


def settings(cfg: SegConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    for k in ("ckpts", "names", "groups", "seeds", "device", "compile", "backbones", "inr_layers", "inr_fit_steps"):
        d.pop(k)
    return d


def _param_groups(model, cfg: SegConfig) -> list[dict]:
    bb = model.backbone
    if not hasattr(bb, "encoder"):  # the pixel floor: the head alone
        return param_groups_weight_decay(model, cfg.weight_decay)
    return layer_decay_groups(
        model, bb.encoder, prefix=SEGMENTOR_ENCODER_PREFIX, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay
    )


def train_segmentor(
    model,
    dataset,
    cfg: SegConfig,
    seed: int,
    out: Path,
    device: torch.device,
    *,
    resume: bool,
    progress: bool,
    env: Dist = SINGLE,
):
    """Train one segmentor through the one loop (schedule -> mmseg losses -> backward -> step -> checkpoint);
    exactly resumable; under `torchrun` DDP at the same global batch. Returns the loop's `FitResult`."""
    bb = model.backbone
    source = getattr(bb, "ckpt", None)
    layers, fit = list(getattr(bb, "inr_layers", ())), getattr(bb, "inr_fit_steps", 0)
    ident = {**settings(cfg), "pretrained": str(source), "feature": bb.feature, "inr_layers": layers, "seed": seed}
    ident |= {"inr_fit_steps": fit} if fit else {}
    if source is None:
        arch = {"model": "pixels", "model_args": {"in_chans": bb.channels}, "family": FLOOR_FAMILY}
    else:
        arch = {"model": bb.model_name, "model_args": bb.model_args, "family": bb.encoder.family}
    spec = RunSpec(out / CKPT, kind="segmentation", identity=ident)
    with training_run(spec, resume=resume, lock=env.main) as run:
        optim = adamw(_param_groups(model, cfg), lr=cfg.lr)
        run.start(model, optim, record={**arch, "pretrained": str(source), "seed": seed})
        if cfg.compile and hasattr(bb, "encoder"):  # the backbone mmseg calls; its heads and data samples stay eager
            bb.compile()
        net = data_parallel(model, env, find_unused=True)  # a backbone's feature may leave weights unused

        def step_fn(batch, step: int) -> StepResult:
            return StepResult(segmentation_loss(model, batch, device, net), len(batch["inputs"]))

        plan = LoopPlan(
            total=cfg.max_steps,
            batch_size=cfg.batch_size,
            seed=seed,
            lr=cfg.lr,
            schedule="poly",
            warmup_fraction=cfg.warmup_fraction,
            ckpt_every=50,
        )
        return run.fit(
            dataset,
            step_fn,
            plan,
            device=device,
            env=env,
            collate_fn=pseudo_collate,
            progress=progress,
            description=f"segment {out.parent.name}",
        )


def segmentation_loss(model, batch: dict[str, Any], device: torch.device, net=None) -> torch.Tensor:
    """mmseg's summed training losses of a collated batch (`inputs`, `data_samples`); the forward pass through
    `net` (the segmentor's DDP wrapper) when given."""
    data = model.data_preprocessor(_to(batch, device), True)
    loss, _ = model.parse_losses((net or model)(**data, mode="loss"))
    return loss


def random_batch(n: int, in_chans: int, size: int, classes: int) -> dict[str, Any]:
    """A collated batch of `n` random images and label maps of side `size` (`minrctl bench --plan` times it)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    inputs, samples = [], []
    for _ in range(n):
        inputs.append(torch.randint(0, 256, (in_chans, size, size), dtype=torch.uint8))
        sample = SegDataSample(metainfo={"img_shape": (size, size), "ori_shape": (size, size)})
        sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size)))
        samples.append(sample)
    return {"inputs": inputs, "data_samples": samples}


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"inputs": [x.to(device) for x in batch["inputs"]], "data_samples": batch["data_samples"]}


def _same_size(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch split into runs of consecutive images of one size, in order: mmseg's test-time preprocessor
    stacks only equal sizes, and predictions must stay in the dataset's order."""
    runs: list[dict[str, list]] = []
    for x, s in zip(batch["inputs"], batch["data_samples"], strict=True):
        if not runs or runs[-1]["inputs"][-1].shape != x.shape:
            runs.append({"inputs": [], "data_samples": []})
        runs[-1]["inputs"].append(x)
        runs[-1]["data_samples"].append(s)
    return runs


@torch.no_grad()
def evaluate(model, dataset, device: torch.device, batch_size: int = 16, env: Dist = SINGLE) -> dict[str, Any]:
    """mmseg's IoUMetric (aAcc, mIoU, mAcc, per-class IoU) plus each image's own mean IoU for paired statistics.
    Images of any size: each is padded to the encoder's size divisor and its prediction cropped back. Under
    `torchrun` each rank predicts its share of the images and every rank scores them all."""
    model.eval()
    metric = IoUMetric(iou_metrics=["mIoU"], prefix="val")
    metric.dataset_meta = dataset.metainfo
    preds = []
    mine = Subset(dataset, shard(len(dataset), env))
    for batch in DataLoader(mine, batch_size=batch_size, collate_fn=pseudo_collate):
        for group in _same_size(batch):
            outputs = model(**model.data_preprocessor(_to(group, device), False), mode="predict")
            metric.process(group, [o.to_dict() for o in outputs])
            preds += [o.pred_sem_seg.data[0].cpu().numpy() for o in outputs]
    metric.results, preds = gather_items(metric.results, env), gather_items(preds, env)
    totals = [sum(r[i] for r in metric.results) for i in range(4)]
    iou = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])["IoU"]
    per_image = []
    for inter, union, _, _ in metric.results:
        present = union > 0
        per_image.append(float((inter[present] / union[present]).mean()) if present.any() else math.nan)
    summary = metric.compute_metrics(metric.results)  # percentages, as mmseg reports them
    classes = dataset.metainfo["classes"]
    return {
        "mIoU": summary["mIoU"],
        "mAcc": summary["mAcc"],
        "aAcc": summary["aAcc"],
        "per_class_IoU": {c: None if np.isnan(v) else float(v) for c, v in zip(classes, iou.tolist(), strict=True)},
        "per_image_IoU": np.asarray(per_image),
        "predictions": preds,
    }


def run_segmentation(cfg: SegConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> SegResults:
    """Every checkpoint x backbone feature x seed (and the pixel floor) on one dataset; mIoU/mAcc/aAcc/per-class
    IoU, a PNG of predictions, and per-image IoU compared in pairs (MINR - MAE, encoders - pixels)."""
    from finetune.seg_report import save_prediction_grid, write_results

    (device, env), t0 = distributed_device(cfg.device), time.perf_counter()
    if cfg.batch_size % env.world:
        raise MinrError(f"--batch-size {cfg.batch_size} must divide among {env.world} processes")
    out, info, arms = Path(out_dir), segdata.resolve(cfg.dataset), plan_arms(cfg)
    with main_locked(out, env) as main:
        entries, runs, data = [], {}, {}
        for arm in arms:
            c = arm.info.in_chans
            if c not in data:
                kw = {"in_chans": c, "max_images": cfg.max_images, "crop": cfg.crop}
                data[c] = segdata.build_dataset(info, "train", **kw), segdata.build_dataset(info, "val", **kw)
            train, val = data[c]
            runs[arm.name] = []
            for seed in range(cfg.seeds):
                torch.manual_seed(seed)
                model = build_segmentor(cfg, arm, len(info.classes)).to(device)
                run_dir = out / re.sub(r"[^A-Za-z0-9_.+-]", "_", arm.name) / f"seed{seed}"
                kw = {"resume": resume, "progress": progress, "env": env}
                fitted = train_segmentor(model, train, cfg, seed, run_dir, device, **kw)
                runs[arm.name].append((fitted, evaluate(model, val, device, env=env)))
            entries.append(_entry(arm, cfg.regime, runs[arm.name]))
        per_image = {n: rs[0][1]["per_image_IoU"] for n, rs in runs.items()}
        results = _results(cfg, info, arms, entries, per_image, len(val), t0)
        if not main:
            return results
        save_prediction_grid(
            val, [(e.name, runs[e.name][0][1]["predictions"]) for e in entries], out / "predictions.png"
        )
        arrays = {
            f"{n}|seed{s}|per_image_IoU": ev["per_image_IoU"] for n, rs in runs.items() for s, (_, ev) in enumerate(rs)
        }
        write_results(results, out, arrays)
    return results


def _results(
    cfg: SegConfig, info, arms: list[Arm], entries: list[SegEntry], per_image: dict, n_val: int, t0: float
) -> SegResults:
    """The typed results: each encoder entry against its pixel floor (same input channels), MINR against MAE."""
    floor_of = {
        a.name: f.name for a in arms for f in arms if a.ckpt and not f.ckpt and a.info.in_chans == f.info.in_chans
    }
    values = [(e.name, e.family, per_image[e.name]) for e in entries]
    group = {a.name: a.group for a in arms}
    vs_floor = [
        compare(a, per_image[a], f, per_image[f], method="segmentation vs pixels", metric="IoU")
        for a, f in floor_of.items()
    ]
    return SegResults(
        config={
            **settings(cfg),
            "seeds": cfg.seeds,
            "backbones": list(cfg.backbones),
            "inr_fit_steps": cfg.inr_fit_steps,
        },
        classes=list(info.classes),
        entries=entries,
        paired=minr_vs_mae(values, method="segmentation", metric="IoU", groups=[group[e.name] for e in entries]),
        vs_floor=vs_floor,
        evaluated_images=n_val,
        runtime_s=time.perf_counter() - t0,
        git_sha=git_sha(),
        hardware=hardware(),
        dataset=cfg.dataset,
    )


def _entry(arm: Arm, regime: str, runs: list) -> SegEntry:
    mious = [float(ev["mIoU"]) / 100 for _, ev in runs]
    fitted, first = runs[0]
    per_class: dict[str, float | None] = {}
    for c in first["per_class_IoU"]:
        vals = [ev["per_class_IoU"][c] for _, ev in runs if ev["per_class_IoU"][c] is not None]
        per_class[c] = float(np.mean(vals)) if vals else None  # IoUMetric's per-class values are fractions
    return SegEntry(
        name=arm.name,
        ckpt=None if arm.ckpt is None else str(arm.ckpt),
        model=arm.model,
        family=arm.family,
        feature=arm.feature,
        inr_layers=list(arm.inr_layers),
        inr_fit_steps=arm.inr_fit_steps,
        regime=regime,
        mean=float(np.mean(mious)),
        std=float(np.std(mious)),
        per_seed=mious,
        mAcc=float(np.mean([ev["mAcc"] for _, ev in runs])) / 100,
        aAcc=float(np.mean([ev["aAcc"] for _, ev in runs])) / 100,
        per_class_IoU=per_class,
        train_images_per_s=fitted.images_per_s,
        first_loss=fitted.losses[0] if fitted.losses else None,
        last_loss=float(np.mean(fitted.losses[-10:])) if fitted.losses else None,
    )
