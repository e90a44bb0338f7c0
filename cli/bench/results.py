"""Every stage's typed results in one object, gathered through the stages' own `load`: what the report, the
verdict and results.json read. Nothing here reads a result file by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.bench.config import BenchConfig
from cli.bench.runs import Bench, Run
from cli.bench.seeds import SeedComparison, comparisons
from cli.bench.stages import COMPUTE, PretrainRun, ProbeOutcome
from minr.io import git_sha, read_json
from minr.runtime import hardware


@dataclass(frozen=True)
class StageTime:
    seconds: float
    continued: bool  # a stopped stage continued: `seconds` is this session's part only
    git_sha: str | None = None  # the code the stage ran (None: recorded before stages kept it)


@dataclass(frozen=True)
class BenchResults:
    config: BenchConfig
    stages: dict[str, StageTime | None]
    pretrain: dict[str, PretrainRun | None]
    checkpoints: dict[str, str | None]  # run -> SHA-256 of its final weights
    reconstruct: Any  # probes.recon.report.ReconResults | None
    probe: ProbeOutcome
    finetune: Any  # finetune.report.FinetuneResults | None
    segment: dict[str, Any]  # regime -> finetune.seg_results.SegResults | None
    git_sha: str  # the code that gathered the results (the report's)
    hardware: dict[str, Any]
    seed_level: list[SeedComparison] = field(default_factory=list)  # over pretraining seeds and both budget arms
    runs: list[Run] = field(default_factory=list)  # every pretraining run of the bench's models

    def has_any(self) -> bool:
        """Whether any stage left results to report."""
        return any(
            (
                any(self.pretrain.values()),
                self.reconstruct,
                self.probe.curve,
                self.probe.main,
                self.finetune,
                *self.segment.values(),
            )
        )


def _time(out: Path, stage: str) -> StageTime | None:
    done = out / stage / "stage.json"
    if not done.is_file():
        return None
    rec = read_json(done, "a bench stage record")
    return StageTime(float(rec["seconds"]), bool(rec.get("continued", False)), rec.get("git_sha"))


def _sha(path: str) -> str | None:
    from minr.checkpoint import stored_weights_sha256

    return stored_weights_sha256(path) if Path(path).is_file() else None


def gather(b: Bench) -> BenchResults:
    loaded = {s.name: s.load(b) for s in COMPUTE}
    return BenchResults(
        config=b.cfg,
        stages={s.name: _time(b.out, s.name) for s in COMPUTE},
        pretrain=loaded["pretrain"],
        checkpoints={n: _sha(c) for n, c in zip(b.names(), b.final(), strict=True)},
        reconstruct=loaded["reconstruct"],
        probe=loaded["probe"],
        finetune=loaded["finetune"],
        segment=loaded["segment"],
        git_sha=git_sha(),
        hardware=hardware(),
        seed_level=comparisons(b),
        runs=b.runs(),
    )
