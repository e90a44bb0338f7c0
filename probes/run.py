"""`minrctl probe --task classification`: frozen features of several encoders, linear probe and k-NN, the raw-pixel
floor, paired MINR - MAE comparisons and the test-time-masking sweep, as typed results written to results.json."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from minr.config import DataConfig
from minr.data import check_classification, data_inputs, load_split
from minr.errors import MinrError
from minr.io import git_sha
from minr.run import main_locked
from minr.runtime import distributed_device, hardware
from probes import memo
from probes.extract import ExtractSpec, FeatureSet, default_cache_dir, extract_kinds
from probes.features import PIXELS, EncoderRef, encoder_ref, known_kinds
from probes.report import write_reports
from probes.results import ProbeEntry, ProbeResults, Score, SweepPoint, best_entries
from probes.stats import minr_vs_mae

METHODS = ("linear", "knn")


@dataclass(frozen=True)
class ProbeConfig:
    ckpts: tuple[str, ...]
    names: tuple[str, ...] = ()  # display names of the checkpoints (default: their model names)
    groups: tuple[str, ...] = ()  # one per checkpoint: MINR and MAE are paired only within a group (default: one)
    data: DataConfig = field(default_factory=DataConfig)
    kinds: tuple[str, ...] = ()  # empty: each encoder's default kind; ("all",): every kind
    methods: tuple[str, ...] = METHODS
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
        for what in ("names", "groups"):
            if getattr(self, what) and len(getattr(self, what)) != len(self.ckpts):
                raise MinrError(f"{len(getattr(self, what))} {what} for {len(self.ckpts)} checkpoints")
        if self.select_on not in ("val", "test"):
            raise MinrError(f"--select-on must be val or test, got {self.select_on!r}")
        for name in ("seeds", "epochs", "knn_k"):
            if getattr(self, name) < 1:
                raise MinrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.knn_t > 0:
            raise MinrError(f"--knn-t must be positive, got {self.knn_t}")
        bad = [r for r in self.mask_ratios if not 0 <= r < 1]
        if bad:
            raise MinrError(f"--mask-ratios must lie in [0, 1), got {bad[0]}")
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise MinrError(f"unknown probe method {sorted(unknown)[0]!r}; use linear and/or knn")
        bad_kinds = [k for k in self.kinds if k != "all" and k not in known_kinds()]
        if bad_kinds:
            raise MinrError(
                f"--kind {bad_kinds[0]!r} does not exist; choose from {', '.join(sorted(known_kinds()))} or all"
            )


@dataclass
class _Features:
    """One entry's features per split, kept only while the run lasts."""

    ref: EncoderRef
    kind: str
    name: str
    splits: dict[str, FeatureSet]


def _kinds(cfg: ProbeConfig, ref: EncoderRef) -> list[str]:
    if not cfg.kinds:
        return [ref.default_kind]
    if cfg.kinds == ("all",) or ref.family == PIXELS:
        return list(ref.kind_names)
    return [k for k in cfg.kinds if k in ref.kind_names] or [ref.default_kind]


def _spec(cfg: ProbeConfig, ref: EncoderRef, split: str, ratio: float = 0.0) -> ExtractSpec:
    return ExtractSpec(
        ckpt=ref.path,
        data=cfg.data,
        split=split,
        layer=cfg.layer if ref.family != PIXELS else -1,
        mask_ratio=ratio,
        mask_kind=cfg.mask_kind,
        image_size=ref.image_size,
        in_chans=ref.in_chans,
        device=cfg.device,
    )


def _labels(fs: FeatureSet, what: str) -> torch.Tensor:
    if fs.labels.ndim != 1:
        raise MinrError(
            f"{what}: the dataset has multi-label attributes; classification probes need one label per "
            "image (use an ImageFolder-style dataset)"
        )
    return fs.labels.long()


def refs(cfg: ProbeConfig) -> list[EncoderRef]:
    """Every feature source, from checkpoint headers alone; the pixel floor (first) at the first encoder's size."""
    encoders = [encoder_ref(c) for c in cfg.ckpts]
    first = encoders[0]
    pixels = encoder_ref(
        PIXELS, image_size=first.image_size, in_chans=first.in_chans, mask_patch=first.mask_patch, seed=first.seed
    )
    return ([pixels] if cfg.pixels_baseline else []) + encoders


def collect(cfg: ProbeConfig, sources: list[EncoderRef], progress: bool, log) -> list[_Features]:
    """Extract train / val / test features for every encoder and kind, every kind of an encoder in one pass."""
    out, names = [], set()
    given = dict(zip(cfg.ckpts, cfg.names, strict=False))
    for ref in sources:
        kinds = _kinds(cfg, ref)
        by_split = {
            s: dict(
                zip(
                    kinds,
                    extract_kinds(_spec(cfg, ref, s), kinds, cfg.cache_dir, progress=progress, log=log, ref=ref),
                    strict=True,
                )
            )
            for s in ("train", "val", "test")
        }
        for kind in kinds:
            name = ref.model if ref.family == PIXELS else f"{given.get(ref.path, ref.model)}:{kind}"
            if name in names:
                name = f"{Path(ref.path).parent.name}/{name}"
            names.add(name)
            out.append(_Features(ref, kind, name, {s: by_split[s][kind] for s in by_split}))
    return out


def evaluate(f: _Features, cfg: ProbeConfig, num_classes: int):
    """Linear probe over seeds (selection on val unless told otherwise) and k-NN, on clean features; both come
    from the probe cache when these features were probed the same way before. Returns (scores by method,
    per-image predictions, predictors that take the feature set of test images extracted later)."""
    cache = Path(cfg.cache_dir or default_cache_dir())
    tr, va, te = (f.splits[s] for s in ("train", "val", "test"))
    _labels(tr, "train"), _labels(va, "val")  # refuses multi-label attributes with a message
    yte = _labels(te, "test")
    select = te if cfg.select_on == "test" else va
    scores: dict[str, Score] = {}
    predictions: dict[str, np.ndarray] = {}
    predictors: dict[str, Callable[[FeatureSet], np.ndarray]] = {}
    if "linear" in cfg.methods:
        runs = [
            memo.linear(cache, tr, select, te, num_classes, seed=s, solver=cfg.solver, epochs=cfg.epochs)
            for s in range(cfg.seeds)
        ]
        accs = [r.accuracy for r in runs]
        val = float(np.mean([r.selection_accuracy for r in runs]))
        scores["linear"] = Score(float(np.mean(accs)), float(np.std(accs)), accs, [r.chosen for r in runs], val)
        predictions.update({f"linear/seed{s}": r.predictions for s, r in enumerate(runs)})
        predictors["linear"] = lambda fs, r=runs[0]: r.predict(fs.features)
    if "knn" in cfg.methods:

        def knn(fs: FeatureSet) -> np.ndarray:
            return memo.knn(cache, tr, fs, num_classes, k=cfg.knn_k, t=cfg.knn_t)

        predictions["knn"] = knn(te)
        predictors["knn"] = knn
        val = float((knn(select) == select.labels.numpy()).mean())
        scores["knn"] = Score(float((predictions["knn"] == yte.numpy()).mean()), val=val)
    return scores, predictions, predictors


def mask_sweep(
    feats: list[_Features], predictors: dict[str, dict], cfg: ProbeConfig, progress: bool, log
) -> list[SweepPoint]:
    """Probes trained on clean features, evaluated on test features extracted at each mask ratio."""
    rows = []
    for ref in dict.fromkeys(f.ref for f in feats):
        mine = [f for f in feats if f.ref == ref]
        for ratio in cfg.mask_ratios:
            kinds = [f.kind for f in mine]
            if ratio == 0:
                masked = {f.kind: f.splits["test"] for f in mine}
            else:
                sets = extract_kinds(
                    _spec(cfg, ref, "test", ratio), kinds, cfg.cache_dir, progress=progress, log=log, ref=ref
                )
                masked = dict(zip(kinds, sets, strict=True))
            for f in mine:
                y = f.splits["test"].labels.numpy()
                for method, predict in predictors[f.name].items():
                    acc = float((predict(masked[f.kind]) == y).mean())
                    rows.append(SweepPoint(f.name, ref.family, f.kind, method, ratio, acc))
    return rows


def run_probe(cfg: ProbeConfig, out_dir: str | Path, *, progress: bool = True, log=print) -> ProbeResults:
    """Probe every encoder; write results.json, results.md, predictions.npz and the masking plot into `out_dir`."""
    t0 = time.perf_counter()
    sources = refs(cfg)  # every checkpoint checked (from its header) before anything is written
    train = load_split(cfg.data, "train", image_size=sources[0].image_size, in_chans=sources[0].in_chans)
    num_classes = check_classification(train.source.labels, train.classes, f"{cfg.data.name} (train)")
    env = distributed_device(cfg.device)[1]  # under torchrun: extraction is sharded, heads fit on every rank
    with main_locked(out_dir, env, inputs=[*cfg.ckpts, *data_inputs(cfg.data)]) as main:
        feats = collect(cfg, sources, progress, log)
        entries, predictions, predictors = [], {}, {}
        for f in feats:
            scores, preds, predictors[f.name] = evaluate(f, cfg, num_classes)
            predictions.update({f"{f.name}|{k}": v for k, v in preds.items()})
            entries.append(_entry(f, scores))
        labels = feats[0].splits["test"].labels.numpy()
        group = dict(zip(cfg.ckpts, cfg.groups, strict=False))
        paired = []
        for method, key in (("linear", "linear/seed0"), ("knn", "knn")):
            have = [f for f in feats if f"{f.name}|{key}" in predictions]
            paired += minr_vs_mae(
                [(f.name, f.ref.family, predictions[f"{f.name}|{key}"] == labels) for f in have],
                method=method,
                metric="accuracy",
                groups=[group.get(f.ref.path) for f in have],
            )
        order = {f.name: i for i, f in enumerate(feats)}
        paired.sort(key=lambda p: (order[p.a], order[p.b]))  # entry order, linear before k-NN
        results = ProbeResults(
            config=dataclasses.asdict(cfg),
            entries=entries,
            paired=paired,
            mask_sweep=mask_sweep(feats, predictors, cfg, progress, log),
            selected_on=cfg.select_on,
            num_classes=num_classes,
            test_images=len(labels),
            runtime_s=time.perf_counter() - t0,
            git_sha=git_sha(),
            hardware=hardware(),
            best=best_entries(entries),
        )
        if main:
            write_reports(results, predictions, labels, Path(out_dir))
    return results


def _entry(f: _Features, scores: dict[str, Score]) -> ProbeEntry:
    return ProbeEntry(
        name=f.name,
        encoder=f.ref.path,
        family=f.ref.family,
        model=f.ref.model,
        kind=f.kind,
        weights_sha256=f.ref.weights_sha256,
        feature_dim=int(f.splits["train"].features.shape[1]),
        extract_images_per_s={s: fs.images_per_s for s, fs in f.splits.items()},
        cached={s: fs.cached for s, fs in f.splits.items()},
        linear=scores.get("linear"),
        knn=scores.get("knn"),
    )
