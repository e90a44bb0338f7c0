"""The bench's stages in order, each registered once: `COMPUTE` here (pretraining and the frozen evaluations in this
module, fine-tuning and segmentation in `cli/bench/training_stages.py`), then the report (`cli/bench/report.py`),
which reads every stage's typed results through `load`. Adding a stage is one `Stage` subclass and one entry in
`COMPUTE`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cli.bench.config import BenchConfig
from cli.bench.runs import Bench, base_overrides, need
from cli.bench.stage import Job, Sizes, Stage, plain_settings, read_results, weights_hashes
from cli.bench.training_stages import Finetune, Segment
from minr.build import default_config
from minr.config import DataConfig, PretrainConfig, to_dict
from minr.io import read_json
from minr.typed import from_plain


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
        return {"cfg": plain_settings(cfg), "ckpts": weights_hashes(list(cfg.ckpts))}

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

        return read_results(b.out / self.name / "results.json", ReconResults)

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
        plain = {k: plain_settings(c, "cache_dir") for k, c in cfgs.items()}
        return {"cfg": plain, "ckpts": weights_hashes([*cfgs["curve"].ckpts, *cfgs["main"].ckpts])}

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
            *(read_results(b.out / self.name / p / "results.json", ProbeResults) for p in ("curve", "main"))
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
        chosen = {entry.rsplit(":", 1)[0]: entry for entry in main.best.values()}  # by run, wherever --out now is
        for run in [*b.names(), *(n for n, _ in b.scratch_first())]:
            entry = chosen.get(run)
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


COMPUTE: tuple[Stage, ...] = (Pretrain(), Reconstruct(), Probe(), Finetune(), Segment())  # the report comes last


def selected(cfg: BenchConfig) -> list[str]:
    """The names of the stages this configuration runs, in order (the report last)."""
    return [n for n in (*(s.name for s in COMPUTE), "report") if not cfg.stages or n in cfg.stages]


def stage_key(out: Path, name: str) -> str | None:
    """The key of a stage that finished in `out`, or None."""
    done = out / name / "stage.json"
    return read_json(done, "a bench stage record")["key"] if done.is_file() else None
