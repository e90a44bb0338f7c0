"""`minrctl bench`: pretrain -> reconstruct -> probe -> fine-tune -> segment -> report, one command.

Each stage writes into its own folder and, when it finishes, a `stage.json` holding the hash of its inputs (its
resolved settings and the SHA-256 of every checkpoint it reads). A stage whose `stage.json` matches is skipped;
one whose inputs changed is run again from scratch; one that was killed continues (every pretraining, fine-tuning
and segmentation run resumes exactly, extracted features come from the cache).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cli.bench.config import STAGES, BenchConfig
from minr.build import default_config
from minr.checkpoint import stored_weights_sha256
from minr.config import DataConfig, to_dict
from minr.errors import MinrError
from minr.io import locked_dir, read_json, write_json
from minr.loop import kept_path
from minr.progress import console

DOES = {
    "pretrain": "pretrain every model under one budget",
    "reconstruct": "PSNR under three protocols, mask ratios and kinds, in and out of domain",
    "probe": "linear probe and k-NN of frozen features, learning curve, test-time masking",
    "finetune": "fine-tune every encoder for classification",
    "segment": "mmseg heads on frozen and fine-tuned encoders",
    "report": "report.md, report.html and results.json",
}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class Bench:
    """One bench run in `out`: where each stage's outputs are and what each stage reads."""

    def __init__(self, cfg: BenchConfig, out: Path, *, quiet: bool) -> None:
        self.cfg, self.out, self.quiet = cfg, out, quiet

    # -- where things are -----------------------------------------------------------------------------------
    def run_dir(self, name: str) -> Path:
        return self.out / "pretrain" / name

    def final(self) -> list[str]:
        return [str(self.run_dir(m) / "checkpoint.safetensors") for m in self.cfg.models]

    def extras(self) -> list[str]:
        return [str(self.run_dir(e.name) / "checkpoint.safetensors") for e in self.cfg.pretrain.extra]

    def curve(self) -> list[tuple[str, int, str]]:
        """(model, step, checkpoint) of every kept checkpoint, for the learning curve."""
        return [
            (m, s, str(kept_path(self.run_dir(m) / "checkpoint.safetensors", s)))
            for m in self.cfg.models
            for s in self.cfg.pretrain.kept_steps()
        ]

    def pretrain_configs(self) -> dict[str, Any]:
        """Every pretraining run's resolved config: the main models under one budget, then the extra runs."""
        p = self.cfg.pretrain
        base = {
            "data.name": p.dataset,
            "data.root": p.data_root,
            "train.seed": p.seed,
            "train.max_steps": p.steps,
            "train.epochs": 10**6,
        }
        if p.batch_size:
            base["train.batch_size"] = p.batch_size
        runs = {
            m: default_config(m, {**base, **p.set, "train.keep_checkpoints": list(p.kept_steps())})
            for m in self.cfg.models
        }
        for e in p.extra:
            runs[e.name] = default_config(
                e.model, {**base, **p.set, **({"data.name": e.dataset} if e.dataset else {}), **e.set}
            )
        return runs

    def hashes(self, ckpts: list[str]) -> list[str]:
        return [stored_weights_sha256(c) for c in ckpts]

    # -- the stages -------------------------------------------------------------------------------------------
    def inputs(self, stage: str) -> dict[str, Any]:
        """What a stage's results depend on (its key)."""
        c = self.cfg
        if stage == "pretrain":
            return {k: to_dict(v) for k, v in self.pretrain_configs().items()}
        if stage == "reconstruct":
            return {
                "cfg": dataclasses.asdict(c.reconstruct),
                "root": c.pretrain.data_root,
                "ckpts": self.hashes(self.final() + self.extras()),
            }
        if stage == "probe":
            return {
                "cfg": dataclasses.asdict(c.probe),
                "root": c.pretrain.data_root,
                "ckpts": self.hashes([k for *_, k in self.curve()] + self.final()),
            }
        if stage == "finetune":
            return {
                "cfg": dataclasses.asdict(c.finetune),
                "root": c.pretrain.data_root,
                "ckpts": self.hashes(self.final()),
            }
        if stage == "segment":
            return {
                "cfg": dataclasses.asdict(c.segment),
                "root": c.pretrain.data_root,
                "ckpts": self.hashes(self.final()),
            }
        return {s: self.stage_key(s) for s in STAGES[:-1] if s in c.stages}

    def stage_key(self, stage: str) -> str | None:
        done = self.out / stage / "stage.json"
        return read_json(done, "a bench stage record")["key"] if done.is_file() else None

    def run_stage(self, stage: str) -> None:
        progress = not self.quiet
        if stage == "pretrain":
            from minr.train import pretrain

            for name, cfg in self.pretrain_configs().items():
                pretrain(cfg, self.run_dir(name), resume=True, progress=progress)
        elif stage == "reconstruct":
            from probes.recon.evaluate import ReconConfig
            from probes.recon.report import run_reconstruct

            r = self.cfg.reconstruct
            cfg = ReconConfig(
                ckpts=tuple(self.final() + self.extras()),
                datasets=tuple(r.datasets) or (self.cfg.pretrain.dataset,),
                data_root=self.cfg.pretrain.data_root,
                split=r.split,
                mask_ratios=r.mask_ratios,
                mask_kinds=r.mask_kinds,
                max_images=r.max_images,
                scale=2,
            )
            run_reconstruct(cfg, self.out / "reconstruct", progress=progress)
        elif stage == "probe":
            self._probe(progress)
        elif stage == "finetune":
            from finetune.classification import run_finetune
            from finetune.configs import FinetuneConfig

            f = self.cfg.finetune
            data = DataConfig(name=f.dataset, root=self.cfg.pretrain.data_root, max_images=f.max_images)
            cfg = FinetuneConfig(
                ckpts=tuple(self.final()), data=data, epochs=f.epochs, batch_size=f.batch_size, seeds=f.seeds
            )
            run_finetune(cfg, self.out / "finetune", resume=True, progress=progress)
        elif stage == "segment":
            self._segment(progress)
        else:
            from cli.bench.report import write_report

            write_report(self)

    def _probe(self, progress: bool) -> None:
        from probes.run import ProbeConfig, run_probe

        p, root = self.cfg.probe, self.cfg.pretrain.data_root
        cache = str(self.out / "probe" / "cache")
        log = (lambda m: None) if self.quiet else console.print
        curve = self.curve()
        run_probe(
            ProbeConfig(
                ckpts=tuple(k for *_, k in curve),
                names=tuple(f"{m}@{s}" for m, s, _ in curve),
                groups=tuple(str(s) for _, s, _ in curve),  # MINR against MAE at the same step only
                data=DataConfig(name=p.dataset, root=root, max_images=p.curve_max_images),
                seeds=1,
                epochs=p.epochs,
                cache_dir=cache,
            ),
            self.out / "probe" / "curve",
            progress=progress,
            log=log,
        )
        run_probe(
            ProbeConfig(
                ckpts=tuple(self.final()),
                data=DataConfig(name=p.dataset, root=root, max_images=p.max_images),
                kinds=("all",),
                seeds=p.seeds,
                epochs=p.epochs,
                mask_ratios=p.mask_ratios,
                cache_dir=cache,
            ),
            self.out / "probe" / "main",
            progress=progress,
            log=log,
        )

    def _segment(self, progress: bool) -> None:
        from finetune.configs import SegConfig
        from finetune.scenes import make_fashion_scenes
        from finetune.segmentation import run_segmentation

        s = self.cfg.segment
        dataset = s.dataset
        if dataset is None:
            scenes = self.out / "segment" / "scenes"
            if not (scenes / "classes.json").is_file():
                make_fashion_scenes(
                    scenes, n_train=s.scenes_train, n_val=s.scenes_val, data_root=self.cfg.pretrain.data_root
                )
            dataset = f"fashion-scenes:{scenes}"
        for regime in ("frozen", "full"):
            r = getattr(s, regime)
            cfg = SegConfig(
                ckpts=tuple(self.final()),
                dataset=dataset,
                max_steps=r.max_steps,
                batch_size=r.batch_size,
                regime=regime,
                backbones=s.backbones,
            )
            run_segmentation(cfg, self.out / "segment" / regime, resume=True, progress=progress)


def check_out(out: Path, cfg: BenchConfig, force: bool) -> None:
    """Refuse an --out that holds a bench with another configuration (stages and models aside), unless --force."""
    record = out / "bench.json"
    if not record.is_file():
        return
    old = read_json(record, "a bench record")["config"]
    new = dataclasses.asdict(cfg)
    keep = ("stages", "models", "expected_s")
    if {k: v for k, v in old.items() if k not in keep} != json.loads(
        json.dumps({k: v for k, v in new.items() if k not in keep})
    ) and not force:
        raise MinrError(
            f"{out} holds a bench with another configuration; choose another --out, "
            "or pass --force to replace its results"
        )


def run_bench(
    cfg: BenchConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Run (or continue) every stage of `cfg.stages` in `out_dir`; returns the report's folder."""
    out = Path(out_dir)
    say = say or (lambda m: console.print(m, highlight=False))
    bench = Bench(cfg, out, quiet=quiet)
    stages = [s for s in STAGES if s in cfg.stages]
    with locked_dir(out, "--out"):
        check_out(out, cfg, force)
        write_json(out / "bench.json", {"config": dataclasses.asdict(cfg)})
        t_start, done_expected, done_actual = time.perf_counter(), 0.0, 0.0
        for i, stage in enumerate(stages, 1):
            key = _digest(bench.inputs(stage))
            elapsed = time.perf_counter() - t_start
            to_run = [s for s in stages[i - 1 :] if not (out / s / "stage.json").is_file()]  # done ones are skipped
            left = sum(cfg.expected_s.get(s, 0) for s in to_run) * (done_actual / done_expected if done_expected else 1)
            eta = f", about {_fmt(left)} left" if left else ""
            head = f"stage {i}/{len(stages)} {stage}: {DOES[stage]} (elapsed {_fmt(elapsed)}{eta})"
            if bench.stage_key(stage) == key:
                say(f"{head} - done before with the same inputs, skipped")
                continue
            folder = out / stage
            started = folder / "stage-inputs.json"
            if folder.exists() and (not started.is_file() or read_json(started, "a bench stage record")["key"] != key):
                shutil.rmtree(folder)  # its inputs changed: its old results would mislead
            continued = started.is_file()  # a stopped run of this stage, continued: part of its work is done
            say(head + (" - continuing" if continued else ""))
            write_json(started, {"key": key})
            t0 = time.perf_counter()
            bench.run_stage(stage)
            seconds = time.perf_counter() - t0
            if not continued:  # only whole stages tell how fast this machine runs the preset
                done_actual += seconds
                done_expected += cfg.expected_s.get(stage, seconds)
            record = {"key": _digest(bench.inputs(stage)) if stage == "report" else key, "seconds": seconds}
            write_json(folder / "stage.json", {**record, "continued": continued})
            say(f"  {stage} done in {_fmt(seconds)}" + (" (this session's part)" if continued else ""))
    return out
