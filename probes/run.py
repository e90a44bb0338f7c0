"""`minrctl probe --task classification`: frozen features of several encoders, linear probe and k-NN, the raw-pixel
floor, paired MINR - MAE comparisons and the test-time-masking sweep, written to results.json / results.md."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minr.build import encoder_skeleton
from minr.checkpoint import read_meta
from minr.config import DataConfig
from minr.errors import MinrError
from probes.extract import PIXELS, ExtractSpec, FeatureSet, extract_kinds
from probes.features import DEFAULT_KIND, FEATURE_KINDS
from probes.knn import knn_predict
from probes.linear import linear_probe
from probes.stats import compare


@dataclass(frozen=True)
class ProbeConfig:
    ckpts: tuple[str, ...]
    data: DataConfig = field(default_factory=DataConfig)
    kinds: tuple[str, ...] = ()  # empty: each family's default kind; ("all",): every kind
    methods: tuple[str, ...] = ("linear", "knn")
    seeds: int = 3
    solver: str = "torch"
    select_on: str = "val"
    epochs: int = 20
    knn_k: int = 20
    knn_t: float = 0.07
    layer: int = -1
    mask_ratios: tuple[float, ...] = ()
    mask_kind: str = "random"
    pixels_baseline: bool = True
    device: str = "auto"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise MinrError("give at least one --ckpt")
        if self.select_on not in ("val", "test"):
            raise MinrError(f"--select-on must be val or test, got {self.select_on!r}")
        if self.seeds < 1:
            raise MinrError("--seeds must be >= 1")
        bad = [r for r in self.mask_ratios if not 0 <= r < 1]
        if bad:
            raise MinrError(f"--mask-ratios must lie in [0, 1), got {bad[0]}")
        unknown = set(self.methods) - {"linear", "knn"}
        if unknown:
            raise MinrError(f"unknown probe method {sorted(unknown)[0]!r}; use linear and/or knn")


@dataclass
class Entry:
    """One (encoder, feature kind): its features per split and results per method."""

    encoder: str
    family: str
    kind: str
    name: str
    splits: dict[str, FeatureSet]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    predictors: dict[str, Any] = field(default_factory=dict)


def _family(ckpt: str) -> tuple[str, str]:
    if ckpt == PIXELS:
        return "pixels", "pixels"
    meta = read_meta(ckpt)
    return meta["family"], meta["model"]


def _kinds(cfg: ProbeConfig, family: str) -> list[str]:
    if not cfg.kinds:
        return [DEFAULT_KIND[family]]
    if cfg.kinds == ("all",) or family == "pixels":
        return list(FEATURE_KINDS[family])
    return [k for k in cfg.kinds if k in FEATURE_KINDS[family]] or [DEFAULT_KIND[family]]


def _spec(cfg: ProbeConfig, ckpt: str, kind: str | None, split: str, size: tuple[int, int], ratio: float = 0.0):
    return ExtractSpec(
        ckpt=ckpt,
        data=cfg.data,
        split=split,
        kind=kind,
        layer=cfg.layer if ckpt != PIXELS else -1,
        mask_ratio=ratio,
        mask_kind=cfg.mask_kind,
        image_size=size[0],
        in_chans=size[1],
        device=cfg.device,
    )


def _labels(fs: FeatureSet, what: str) -> torch.Tensor:
    if fs.labels.ndim != 1:
        raise MinrError(
            f"{what}: the dataset has multi-label attributes; classification probes need one label per "
            "image (use an ImageFolder-style dataset)"
        )
    return fs.labels.long()


def _size_of(ckpt: str) -> tuple[int, int]:
    model, _ = encoder_skeleton(ckpt)
    return model.image_size, model.in_chans


def _extract_all(cfg, ckpt, kinds, split, size, ratio, progress, log) -> dict[str, FeatureSet]:
    """Every kind of one encoder and split in one pass over the images."""
    sets = extract_kinds(_spec(cfg, ckpt, None, split, size, ratio), kinds, cfg.cache_dir, progress=progress, log=log)
    return dict(zip(kinds, sets, strict=True))


def collect(cfg: ProbeConfig, progress: bool, log) -> list[Entry]:
    """Extract train / val / test features for every encoder and kind (the pixel floor first)."""
    size = _size_of(cfg.ckpts[0])
    encoders = ([PIXELS] if cfg.pixels_baseline else []) + list(cfg.ckpts)
    entries, names = [], set()
    for ckpt in encoders:
        family, model = _family(ckpt)
        kinds = _kinds(cfg, family)
        by_split = {s: _extract_all(cfg, ckpt, kinds, s, size, 0.0, progress, log) for s in ("train", "val", "test")}
        for kind in kinds:
            name = model if ckpt == PIXELS else f"{model}:{kind}"
            if name in names:
                name = f"{Path(ckpt).parent.name}/{name}"
            names.add(name)
            entries.append(Entry(ckpt, family, kind, name, {s: by_split[s][kind] for s in by_split}))
    return entries


def evaluate(entry: Entry, cfg: ProbeConfig, num_classes: int) -> None:
    """Linear probe over seeds (selection on val unless told otherwise) and k-NN, on clean features."""
    tr, va, te = (entry.splits[s] for s in ("train", "val", "test"))
    ytr, yva, yte = _labels(tr, "train"), _labels(va, "val"), _labels(te, "test")
    select = (te.features, yte) if cfg.select_on == "test" else (va.features, yva)
    if "linear" in cfg.methods:
        accs, chosen = [], []
        for seed in range(cfg.seeds):
            r = linear_probe(
                (tr.features, ytr),
                select,
                (te.features, yte),
                num_classes,
                seed=seed,
                solver=cfg.solver,
                epochs=cfg.epochs,
            )
            accs.append(r.accuracy)
            chosen.append(r.chosen)
            entry.predictions[f"linear/seed{seed}"] = r.predictions
            if seed == 0:
                entry.predictors["linear"] = r.predict
        entry.results["linear"] = {
            "mean": float(np.mean(accs)),
            "std": float(np.std(accs)),
            "per_seed": accs,
            "chosen": chosen,
        }
    if "knn" in cfg.methods:
        pred = (
            knn_predict(tr.features, ytr, te.features, num_classes=num_classes, k=cfg.knn_k, temperature=cfg.knn_t)
            .argmax(1)
            .numpy()
        )
        entry.predictions["knn"] = pred
        entry.predictors["knn"] = lambda x: (
            knn_predict(tr.features, ytr, x, num_classes=num_classes, k=cfg.knn_k, temperature=cfg.knn_t)
            .argmax(1)
            .numpy()
        )
        entry.results["knn"] = {"mean": float((pred == yte.numpy()).mean()), "std": 0.0, "per_seed": None}


def paired(entries: list[Entry], labels: np.ndarray) -> list[dict[str, Any]]:
    """Every MINR entry against every MAE entry, per method, on the same test images (seed 0 for the probe)."""
    out = []
    for a in (e for e in entries if e.family == "minr"):
        for b in (e for e in entries if e.family == "mae"):
            for method in ("linear", "knn"):
                key = "linear/seed0" if method == "linear" else "knn"
                if key in a.predictions and key in b.predictions:
                    stats = compare(a.predictions[key] == labels, b.predictions[key] == labels)
                    out.append({"a": a.name, "b": b.name, "method": method, **stats})
    return out


def mask_sweep(entries: list[Entry], cfg: ProbeConfig, progress: bool, log) -> list[dict[str, Any]]:
    """Probes trained on clean features, evaluated on test features extracted at each mask ratio."""
    rows, size = [], _size_of(cfg.ckpts[0])
    for ckpt in dict.fromkeys(e.encoder for e in entries):
        mine = [e for e in entries if e.encoder == ckpt]
        for ratio in cfg.mask_ratios:
            masked = (
                {e.kind: e.splits["test"] for e in mine}
                if ratio == 0
                else _extract_all(cfg, ckpt, [e.kind for e in mine], "test", size, ratio, progress, log)
            )
            for e in mine:
                y = e.splits["test"].labels.numpy()
                for method, predict in e.predictors.items():
                    acc = float((predict(masked[e.kind].features) == y).mean())
                    rows.append({"name": e.name, "method": method, "mask_ratio": ratio, "accuracy": acc})
    return rows


def run_probe(cfg: ProbeConfig, out_dir: str | Path, *, progress: bool = True, log=print) -> dict[str, Any]:
    from probes.report import write_reports

    t0 = time.perf_counter()
    entries = collect(cfg, progress, log)
    ref = entries[0].splits["train"]
    num_classes = int(_labels(ref, "train").max()) + 1
    for e in entries:
        evaluate(e, cfg, num_classes)
    labels = entries[0].splits["test"].labels.numpy()
    results = {
        "config": dataclasses.asdict(cfg),
        "entries": [_entry_dict(e) for e in entries],
        "paired": paired(entries, labels),
        "mask_sweep": mask_sweep(entries, cfg, progress, log),
        "selected_on": cfg.select_on,
        "num_classes": num_classes,
        "test_images": len(labels),
        "runtime_s": time.perf_counter() - t0,
    }
    write_reports(results, entries, labels, Path(out_dir))
    return results


def _entry_dict(e: Entry) -> dict[str, Any]:
    ips = {s: fs.images_per_s for s, fs in e.splits.items()}
    return {
        "name": e.name,
        "encoder": e.encoder,
        "family": e.family,
        "kind": e.kind,
        "weights_sha256": e.splits["train"].key["weights"],
        "feature_dim": int(e.splits["train"].features.shape[1]),
        "extract_images_per_s": ips,
        "cached": {s: fs.cached for s, fs in e.splits.items()},
        **e.results,
    }
