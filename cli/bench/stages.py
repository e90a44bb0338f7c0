"""The bench's stages as objects, in order, each registered once: `COMPUTE` here, then the report.

A stage owns its part of the bench: what it does (one line), the library configs it runs (built from its section
of the `BenchConfig`; building them validates every value, so `validate` refuses a bad preset before anything
runs), the key of its inputs (a stage whose key is unchanged is skipped), `run`, `load` (its typed results, read
back from what it wrote), and `work` (how much it does, to scale the time estimate when `--set` changes the budget).
Adding a stage is one class here and one entry in `COMPUTE`; the report (`cli/bench/report.py`) reads every
stage's typed results through `load`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cli.bench.config import BenchConfig
from cli.bench.runs import Bench, base_overrides, encoders, need
from minr.build import default_config
from minr.config import DataConfig, PretrainConfig, to_dict
from minr.io import read_json
from minr.typed import from_plain


def _hashes(ckpts: list[str]) -> list[str]:
    from minr.checkpoint import stored_weights_sha256

    return [stored_weights_sha256(c) for c in ckpts]


def _settings(cfg: Any, *drop: str) -> dict[str, Any]:
    """A library config as plain data without the fields the key holds otherwise (checkpoints by their hashes)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("ckpts", *drop)}


@dataclass(frozen=True)
class Job:
    """One unit of a stage's work, for `--plan`: `images` passes of `kind` (pretrain, forward, features,
    finetune, segment/<regime>/<feature>) through the architecture of pretraining run `run`, at global `batch`
    (0: inference)."""

    stage: str
    what: str
    run: str
    kind: str
    images: int
    batch: int = 0


Sizes = Callable[[str | None, str | None], tuple[int, int]]  # (dataset, root) -> (train, test) image counts


def _results(path: Path, cls: type) -> Any:
    return from_plain(cls, read_json(path, "a result"), str(path)) if path.is_file() else None


class Stage:
    name = ""
    does = ""

    def configs(self, b: Bench) -> Any:
        """The library configs this stage runs, validated as they are built."""
        return None

    def inputs(self, b: Bench) -> dict[str, Any]:
        """What the stage's results depend on: its key."""
        return {"cfg": to_dict(self.configs(b))} if dataclasses.is_dataclass(self.configs(b)) else {}

    def run(self, b: Bench, progress: bool) -> None:
        raise NotImplementedError

    def load(self, b: Bench) -> Any:
        return None

    def work(self, cfg: BenchConfig) -> float:
        """Proportional to the stage's cost (the unit is the stage's own)."""
        return 1.0

    def jobs(self, b: Bench, sizes: Sizes) -> list[Job]:
        """The stage's work as jobs (`minrctl bench --plan`)."""
        return []

    def outcomes(self, b: Bench) -> dict[str, dict[str, np.ndarray]]:
        """metric -> run name -> per-item values on the same items for every run (correct/wrong per test image,
        per-image IoU or PSNR): what the seed-level comparisons resample. Empty when the stage has not run."""
        return {}


class Pretrain(Stage):
    name, does = "pretrain", "pretrain every model under one budget"

    def configs(self, b: Bench) -> dict[str, PretrainConfig]:
        """Every run's resolved config: the bench's runs (steps bound them; the recipes' epochs do not; the first
        seed keeps the learning curve's checkpoints, every run its initialisation), then the extra runs."""
        p, base = b.cfg.pretrain, base_overrides(b)
        runs = {}
        for r in b.runs():
            first = r.seed == p.seed and r.matched_to is None
            keep = list(p.kept_steps()) if first else [0]
            runs[r.name] = default_config(
                r.model, {**base, "train.seed": r.seed, "train.max_steps": r.steps, "train.keep_checkpoints": keep}
            )
        for e in p.extra:
            runs[e.name] = default_config(e.model, {**base, **({"data.name": e.dataset} if e.dataset else {}), **e.set})
        return runs

    def inputs(self, b: Bench) -> dict[str, Any]:
        return {k: to_dict(v) for k, v in self.configs(b).items()}

    def run(self, b: Bench, progress: bool) -> None:
        from minr.train import pretrain

        for name, cfg in self.configs(b).items():
            pretrain(cfg, b.run_dir(name), resume=True, progress=progress)

    def jobs(self, b: Bench, sizes: Sizes) -> list[Job]:
        return [
            Job(self.name, n, n, "pretrain", c.train.max_steps * c.train.batch_size, c.train.batch_size)
            for n, c in self.configs(b).items()
        ]

    def load(self, b: Bench) -> dict[str, PretrainRun | None]:
        return {n: PretrainRun.read(b.run_dir(n) / "summary.json") for n in b.names()}

    def work(self, cfg: BenchConfig) -> float:
        p = cfg.pretrain
        flops_arm = 6 * sum(1 for m in cfg.models if not m.startswith("mae")) if p.equal_flops else 0  # ~6x steps
        return p.steps * p.batch_size * (p.seeds * (len(cfg.models) + flops_arm) + len(p.extra))


@dataclass(frozen=True)
class PretrainRun:
    """What the report reads of a pretraining run's summary.json."""

    model: str
    steps: int
    train_images_per_s: float | None
    psnr_full: float | None = None
    psnr_pasted: float | None = None
    psnr_masked: float | None = None

    @classmethod
    def read(cls, path: Path) -> PretrainRun | None:
        if not path.is_file():
            return None
        s = read_json(path, "a pretraining summary")
        names = {f.name for f in dataclasses.fields(cls)}
        return from_plain(cls, {k: v for k, v in s.items() if k in names}, str(path))


class Reconstruct(Stage):
    name, does = "reconstruct", "PSNR under three protocols, mask ratios and kinds, in and out of domain"

    def configs(self, b: Bench):
        from probes.recon.evaluate import ReconConfig

        r = b.cfg.reconstruct
        return ReconConfig(
            ckpts=tuple(b.final() + b.extras()),
            datasets=tuple(r.datasets) or (need(b.cfg, "pretrain", b.cfg.pretrain.dataset),),
            data_root=b.cfg.root("reconstruct"),
            split=r.split,
            mask_ratios=r.mask_ratios,
            mask_kinds=r.mask_kinds,
            max_images=r.max_images,
            scale=2,
        )

    def inputs(self, b: Bench) -> dict[str, Any]:
        cfg = self.configs(b)
        return {"cfg": _settings(cfg), "ckpts": _hashes(list(cfg.ckpts))}

    def run(self, b: Bench, progress: bool) -> None:
        from probes.recon.report import run_reconstruct

        run_reconstruct(self.configs(b), b.out / self.name, progress=progress)

    def jobs(self, b: Bench, sizes: Sizes) -> list[Job]:
        r, out = self.configs(b), []
        for ckpt in r.ckpts:
            for ds in r.datasets:
                n = min(r.max_images or sizes(ds, r.data_root)[1], sizes(ds, r.data_root)[1])
                per = len(r.mask_ratios) * len(r.mask_kinds)
                out.append(Job(self.name, f"{b.run_of(ckpt)} on {ds}", b.run_of(ckpt), "forward", n * per))
        return out

    def load(self, b: Bench):
        from probes.recon.report import ReconResults

        return _results(b.out / self.name / "results.json", ReconResults)

    def work(self, cfg: BenchConfig) -> float:
        r = cfg.reconstruct
        runs = len(cfg.models) + len(cfg.pretrain.extra)
        return runs * max(len(r.datasets), 1) * len(r.mask_ratios) * len(r.mask_kinds) * r.max_images


@dataclass(frozen=True)
class ProbeOutcome:
    curve: Any  # ProbeResults of every kept checkpoint (default kind, one seed), or None
    main: Any  # ProbeResults of the final checkpoints (every kind, every seed, the masking sweep), or None


class Probe(Stage):
    name, does = "probe", "linear probe and k-NN of frozen features, learning curve, test-time masking"

    def configs(self, b: Bench):
        from probes.run import ProbeConfig

        p, root = b.cfg.probe, b.cfg.root("probe")
        dataset = need(b.cfg, "probe", p.dataset)
        curve = b.curve()
        cache = str(b.out / self.name / "cache")
        inits = [c for _, c in b.scratch_first()]  # the randomly initialised encoders, in the main table too
        return {
            "curve": ProbeConfig(
                ckpts=tuple(k for *_, k in curve),
                names=tuple(f"{m}@{s}" for m, s, _ in curve),
                groups=tuple(str(s) for _, s, _ in curve),  # MINR against MAE at the same step only
                data=DataConfig(name=dataset, root=root, max_images=p.curve_max_images),
                seeds=1,
                epochs=p.epochs,
                cache_dir=cache,
            ),
            "main": ProbeConfig(
                ckpts=tuple(b.final() + inits),
                names=tuple(b.names() + [n for n, _ in b.scratch_first()]),
                groups=tuple(f"seed{r.seed}" for r in b.runs()) + ("init",) * len(inits),  # pairs within a seed
                data=DataConfig(name=dataset, root=root, max_images=p.max_images),
                kinds=("all",),
                seeds=p.seeds,
                epochs=p.epochs,
                mask_ratios=p.mask_ratios,
                cache_dir=cache,
            ),
        }

    def inputs(self, b: Bench) -> dict[str, Any]:
        cfgs = self.configs(b)
        plain = {k: _settings(c, "cache_dir") for k, c in cfgs.items()}
        return {"cfg": plain, "ckpts": _hashes([*cfgs["curve"].ckpts, *cfgs["main"].ckpts])}

    def run(self, b: Bench, progress: bool) -> None:
        from probes.run import run_probe

        log = (lambda m: None) if b.quiet else b.log
        for part, cfg in self.configs(b).items():
            run_probe(cfg, b.out / self.name / part, progress=progress, log=log)

    def jobs(self, b: Bench, sizes: Sizes) -> list[Job]:
        """Train and test features once, the test features again at every non-zero test-time mask ratio."""
        out = []
        for part, cfg in self.configs(b).items():
            train, test = sizes(cfg.data.name, cfg.data.root)
            passes = min(cfg.data.max_images or train, train) + test * (1 + sum(m > 0 for m in cfg.mask_ratios))
            for ckpt, name in zip(cfg.ckpts, cfg.names, strict=True):
                out.append(Job(self.name, f"{name} ({part})", b.run_of(ckpt), "features", passes))
        return out

    def load(self, b: Bench) -> ProbeOutcome:
        from probes.results import ProbeResults

        return ProbeOutcome(
            *(_results(b.out / self.name / p / "results.json", ProbeResults) for p in ("curve", "main"))
        )

    def outcomes(self, b: Bench) -> dict[str, dict[str, np.ndarray]]:
        """Per test image, correct or not, of each run's kind chosen on validation (linear probe of the first probe
        seed, and k-NN)."""
        main = self.load(b).main
        path = b.out / self.name / "main" / "predictions.npz"
        if main is None or not path.is_file():
            return {}
        with np.load(path) as z:
            labels, got = z["labels"], {k: z[k] for k in z.files}
        out: dict[str, dict[str, np.ndarray]] = {"probe linear": {}, "probe knn": {}}
        for run, ckpt in [(n, b.ckpt(n)) for n in b.names()] + b.scratch_first():
            entry = main.best.get(ckpt)
            for method, key in (("linear", "linear/seed0"), ("knn", "knn")):
                if entry and f"{entry}|{key}" in got:
                    out[f"probe {method}"][run] = got[f"{entry}|{key}"] == labels
        return out

    def work(self, cfg: BenchConfig) -> float:
        p = cfg.probe
        n = len(cfg.models)
        return n * (p.max_images or 60000) * (1 + p.seeds + len(p.mask_ratios)) + n * len(cfg.pretrain.curve) * (
            p.curve_max_images or 60000
        )


class Finetune(Stage):
    name, does = "finetune", "fine-tune every encoder for classification"

    def configs(self, b: Bench):
        from finetune.configs import FinetuneConfig

        f = b.cfg.finetune
        data = DataConfig(name=need(b.cfg, "finetune", f.dataset), root=b.cfg.root("finetune"), max_images=f.max_images)
        names, ckpts, groups = encoders(b, scratch=f.scratch)
        return FinetuneConfig(
            ckpts=ckpts, names=names, groups=groups, data=data, epochs=f.epochs, batch_size=f.batch_size, seeds=f.seeds
        )

    def inputs(self, b: Bench) -> dict[str, Any]:
        cfg = self.configs(b)
        return {"cfg": _settings(cfg), "ckpts": _hashes(list(cfg.ckpts))}

    def run(self, b: Bench, progress: bool) -> None:
        from finetune.classification import run_finetune

        run_finetune(self.configs(b), b.out / self.name, resume=True, progress=progress)

    def jobs(self, b: Bench, sizes: Sizes) -> list[Job]:
        cfg = self.configs(b)
        train = sizes(cfg.data.name, cfg.data.root)[0]
        images = cfg.epochs * min(cfg.data.max_images or train, train) * cfg.seeds
        return [
            Job(self.name, n, b.run_of(c), "finetune", images, cfg.batch_size)
            for c, n in zip(cfg.ckpts, cfg.names, strict=True)
        ]

    def load(self, b: Bench):
        from finetune.report import FinetuneResults

        return _results(b.out / self.name / "results.json", FinetuneResults)

    def outcomes(self, b: Bench) -> dict[str, dict[str, np.ndarray]]:
        """Per test image, the fraction of fine-tuning seeds that classify it right, for every run and control."""
        res, path = self.load(b), b.out / self.name / "predictions.npz"
        if res is None or not path.is_file():
            return {}
        with np.load(path) as z:
            labels, got = z["labels"], {k: z[k] for k in z.files}
        seeds = range(res.config["seeds"])
        right = {e.name: np.mean([got[f"{e.name}|seed{s}"] == labels for s in seeds], 0) for e in res.entries}
        return {"fine-tuning": right}

    def work(self, cfg: BenchConfig) -> float:
        f = cfg.finetune
        return len(cfg.models) * f.seeds * f.epochs * (f.max_images or 60000)


class Segment(Stage):
    name, does = "segment", "mmseg heads on frozen and fine-tuned encoders"
    REGIMES = ("frozen", "full")

    def scenes(self, b: Bench) -> Path:
        return b.out / self.name / "scenes"

    def configs(self, b: Bench):
        from finetune.configs import SegConfig

        s = b.cfg.segment
        dataset = s.dataset or f"fashion-scenes:{self.scenes(b)}"
        names, ckpts, groups = encoders(b, scratch=s.scratch)
        fit = {} if s.inr_fit_steps is None else {"inr_fit_steps": s.inr_fit_steps}
        return {
            regime: SegConfig(
                ckpts=ckpts,
                names=names,
                groups=groups,
                dataset=dataset,
                max_steps=getattr(s, regime).max_steps,
                batch_size=getattr(s, regime).batch_size,
                lr=getattr(s, regime).lr,
                regime=regime,
                backbones=s.backbones,
                inr_layers=s.inr_layers,
                seeds=s.seeds,
                crop=s.crop,
                **fit,
            )
            for regime in self.REGIMES
        }

    def inputs(self, b: Bench) -> dict[str, Any]:
        cfgs = self.configs(b)
        plain = {k: _settings(c) for k, c in cfgs.items()}
        s = b.cfg.segment
        scenes = None if s.dataset else (s.scenes_train, s.scenes_val, b.cfg.root("segment"))
        return {"cfg": plain, "scenes": scenes, "ckpts": _hashes(list(cfgs["frozen"].ckpts))}

    def run(self, b: Bench, progress: bool) -> None:
        from finetune.segmentation import run_segmentation

        s = b.cfg.segment
        if s.dataset is None and not (self.scenes(b) / "classes.json").is_file():
            from finetune.scenes import make_fashion_scenes

            make_fashion_scenes(
                self.scenes(b), n_train=s.scenes_train, n_val=s.scenes_val, data_root=b.cfg.root("segment")
            )
        for regime, cfg in self.configs(b).items():
            run_segmentation(cfg, b.out / self.name / regime, resume=True, progress=progress)

    def jobs(self, b: Bench, sizes: Sizes) -> list[Job]:
        """Every encoder x feature it has (per-pixel ones: MINR only) and the pixel floor, in both regimes."""
        from cli.bench.runs import family
        from finetune.configs import DENSE_FEATURES

        out = []
        for regime, cfg in self.configs(b).items():
            images = cfg.max_steps * cfg.batch_size * cfg.seeds
            for ckpt, name in zip(cfg.ckpts, cfg.names, strict=True):
                run = b.run_of(ckpt)
                dense = family(b.model_of(run)) == "minr"
                for f in (f for f in cfg.backbones if f != "pixels" and (dense or f not in DENSE_FEATURES)):
                    out.append(
                        Job(self.name, f"{name}:{f} {regime}", run, f"segment/{regime}/{f}", images, cfg.batch_size)
                    )
            if "pixels" in cfg.backbones:
                run = b.run_of(cfg.ckpts[0])
                out.append(Job(self.name, f"pixels {regime}", run, f"segment/{regime}/pixels", images, cfg.batch_size))
        return out

    def load(self, b: Bench) -> dict[str, Any]:
        from finetune.seg_results import SegResults

        return {r: _results(b.out / self.name / r / "results.json", SegResults) for r in self.REGIMES}

    def outcomes(self, b: Bench) -> dict[str, dict[str, np.ndarray]]:
        """Per validation image, IoU of the first head seed, for every run x feature: "segmentation frozen tokens"
        -> {run: (images,)}. The pixel floor has no run and is compared in the segmentation tables."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for regime, res in self.load(b).items():
            path = b.out / self.name / regime / "predictions.npz"
            if res is None or not path.is_file():
                continue
            with np.load(path) as z:
                got = {k: z[k] for k in z.files}
            for e in res.entries:
                run, _, feature = e.name.partition(":")
                if not e.is_floor and f"{e.name}|seed0|per_image_IoU" in got:
                    out.setdefault(f"segmentation {regime} {feature}", {})[run] = got[f"{e.name}|seed0|per_image_IoU"]
        return out

    def work(self, cfg: BenchConfig) -> float:
        s = cfg.segment
        per = sum(r.max_steps * r.batch_size for r in (s.frozen, s.full))
        return len(cfg.models) * cfg.pretrain.seeds * len(s.backbones) * per * s.seeds


COMPUTE: tuple[Stage, ...] = (Pretrain(), Reconstruct(), Probe(), Finetune(), Segment())  # the report comes last


def selected(cfg: BenchConfig) -> list[str]:
    """The names of the stages this configuration runs, in order (the report last)."""
    return [n for n in (*(s.name for s in COMPUTE), "report") if not cfg.stages or n in cfg.stages]


def stage_key(out: Path, name: str) -> str | None:
    """The key of a stage that finished in `out`, or None."""
    done = out / name / "stage.json"
    return read_json(done, "a bench stage record")["key"] if done.is_file() else None
