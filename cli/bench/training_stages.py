"""The bench's training stages: fine-tuning for classification and segmentation with mmseg heads, each on every
pretrained encoder (and, as controls, their random initialisations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cli.bench.config import BenchConfig
from cli.bench.runs import Bench, encoders, need
from cli.bench.stage import Job, Sizes, Stage, plain_settings, read_results, weights_hashes
from minr.config import DataConfig
from minr.runtime import barrier, current


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
        return {"cfg": plain_settings(cfg), "ckpts": weights_hashes(list(cfg.ckpts))}

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

        return read_results(b.out / self.name / "results.json", FinetuneResults)

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
        names, ckpts, groups = encoders(b, scratch=s.scratch, seeds=s.pretrain_seeds)
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
        plain = {k: plain_settings(c) for k, c in cfgs.items()}
        s = b.cfg.segment
        scenes = None if s.dataset else (s.scenes_train, s.scenes_val, b.cfg.root("segment"))
        return {"cfg": plain, "scenes": scenes, "ckpts": weights_hashes(list(cfgs["frozen"].ckpts))}

    def run(self, b: Bench, progress: bool) -> None:
        from finetune.segmentation import run_segmentation

        s = b.cfg.segment
        env = current()
        if env.main and s.dataset is None and not (self.scenes(b) / "classes.json").is_file():
            from finetune.scenes import make_fashion_scenes

            make_fashion_scenes(
                self.scenes(b), n_train=s.scenes_train, n_val=s.scenes_val, data_root=b.cfg.root("segment")
            )
        barrier(env)  # the other ranks read the scenes rank 0 wrote
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

        return {r: read_results(b.out / self.name / r / "results.json", SegResults) for r in self.REGIMES}

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
        seeds = s.pretrain_seeds or cfg.pretrain.seeds  # never above pretrain.seeds (BenchConfig checks)
        return len(cfg.models) * seeds * len(s.backbones) * per * s.seeds
