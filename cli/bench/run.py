"""`minrctl bench`: pretrain -> reconstruct -> probe -> fine-tune -> segment -> report, one command.

Each stage writes into its own folder and, when it finishes, a `stage.json` holding the hash of its inputs (its
resolved settings and the SHA-256 of every checkpoint it reads). A stage whose `stage.json` matches is skipped;
one whose inputs changed is run again from scratch; one that was killed continues (every pretraining, fine-tuning
and segmentation run resumes exactly, extracted features come from the cache).

The bench owns only what it wrote: `--out` must be empty, missing, or a bench's own folder (its `bench.json`), and
a stage folder is only ever replaced when the bench's own record (`stage-inputs.json`) is in it.
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

from cli.bench.config import BenchConfig, load_preset
from cli.bench.report import Report
from cli.bench.runs import Bench
from cli.bench.stage import Stage
from cli.bench.stages import COMPUTE, selected, stage_key
from minr.errors import MinrError
from minr.io import git_sha, read_json, write_json
from minr.parallel import broadcast
from minr.run import main_locked
from minr.runtime import Dist, barrier, distributed_device

STAGES: tuple[Stage, ...] = (*COMPUTE, Report())
BY_NAME = {s.name: s for s in STAGES}
RECORD = "bench.json"
STARTED = "stage-inputs.json"
PLAN_FILES = ("plan.json", "plan.md")  # `--plan`'s, which a bench may follow in the same folder
# What a bench writes at the top of --out besides its stage folders.
OWN_FILES = (RECORD, "report.md", "report.html", "results.json", "learning_curves.png", ".minr.lock", *PLAN_FILES)


def validate(cfg: BenchConfig) -> BenchConfig:
    """Refuse unknown stages and build every selected stage's library configs (each validates itself), before
    anything runs: a bad value fails here, not an hour into the bench."""
    bad = [s for s in cfg.stages if s not in BY_NAME]
    if bad:
        raise MinrError(f"unknown stage {bad[0]!r}; choose from {', '.join(BY_NAME)}")
    b = Bench(cfg, Path("bench-out"))
    for name in selected(cfg):
        BY_NAME[name].configs(b)
    return cfg


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _fmt(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def check_out(out: Path, cfg: BenchConfig, force: bool) -> None:
    """Refuse an --out the bench did not write (anything in it but a bench's own files and stage folders), and a
    bench with another configuration (stages and models aside) unless --force."""
    if str(out) in ("", "."):
        raise MinrError("--out must name a folder for the bench (not empty, not the current directory)")
    if out.exists() and not out.is_dir():
        raise MinrError(f"--out {out} is a file; give a folder")
    if not out.is_dir():
        return
    # the lock is taken before the record; a plan may come first
    present = sorted(p.name for p in out.iterdir() if p.name not in (".minr.lock", *PLAN_FILES))
    record = out / RECORD
    if not record.is_file():
        if present:
            raise MinrError(
                f"--out {out} holds {', '.join(present[:3])}{', ...' if len(present) > 3 else ''} and no bench "
                "record: the bench writes only into an empty folder or one of its own; choose another --out"
            )
        return
    foreign = [n for n in present if n not in OWN_FILES and n not in BY_NAME]
    if foreign:
        raise MinrError(
            f"--out {out} holds {', '.join(foreign[:3])}, which the bench did not write; move it away or "
            "choose another --out"
        )
    old = read_json(record, "a bench record").get("config", {})
    new = json.loads(json.dumps(dataclasses.asdict(cfg)))
    keep = ("stages", "models", "expected_s", "plan")  # what does not change a result
    if {k: v for k, v in old.items() if k not in keep} != {k: v for k, v in new.items() if k not in keep} and not force:
        raise MinrError(
            f"{out} holds a bench with another configuration; choose another --out, "
            "or pass --force to replace its results"
        )


def _clear_stage(folder: Path, key: str) -> bool:
    """Make `folder` ready for a run with `key`: True when it continues a stopped run with the same inputs. A
    folder of the bench's whose inputs changed is removed; one without the bench's record is refused."""
    started = folder / STARTED
    if not folder.exists():
        return False
    if not started.is_file():
        if any(folder.iterdir()):
            raise MinrError(
                f"{folder} was not written by the bench (no {STARTED}); move it away or choose another --out"
            )
        return False
    if read_json(started, "a bench stage record")["key"] == key:
        return True
    shutil.rmtree(folder)  # the bench's own results from other inputs: they would mislead
    return False


def estimate(cfg: BenchConfig, stage: Stage) -> float:
    """Seconds a stage takes on the reference machine: the preset's figure scaled by the configured work."""
    seconds = cfg.expected_s.get(stage.name, 0.0)
    if not seconds:
        return 0.0
    try:
        ref = load_preset(cfg.name)
    except MinrError:
        return seconds
    base = stage.work(ref)
    return seconds * stage.work(cfg) / base if base else seconds


def run_bench(
    cfg: BenchConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Run (or continue) every selected stage in `out_dir`; returns the report's folder."""
    from minr.progress import console

    validate(cfg)
    git_sha()  # the commit this process starts from, which every stage record and the report then name
    out = Path(out_dir)
    check_out(out, cfg, force)
    say = say or (lambda m: console.print(m, highlight=False))
    bench = Bench(cfg, out, quiet=quiet)
    stages = [BY_NAME[n] for n in selected(cfg)]
    env = distributed_device("auto")[1]  # under torchrun every rank runs each stage; rank 0 keeps the records
    if not env.main:
        say = lambda m: None  # noqa: E731
    with main_locked(out, env, "--out") as main:
        if main:
            check_out(out, cfg, force)  # again, under the lock
            write_json(out / RECORD, {"config": dataclasses.asdict(cfg)})
        t_start, done_expected, done_actual = time.perf_counter(), 0.0, 0.0
        for i, stage in enumerate(stages, 1):
            key = _digest(stage.inputs(bench))
            to_run = [s for s in stages[i - 1 :] if stage_key(out, s.name) is None]  # done ones are skipped
            left = sum(estimate(cfg, s) for s in to_run) * (done_actual / done_expected if done_expected else 1)
            eta = f", about {_fmt(left)} left" if left else ""
            elapsed = _fmt(time.perf_counter() - t_start)
            head = f"stage {i}/{len(stages)} {stage.name}: {stage.does} (elapsed {elapsed}{eta})"
            if broadcast(stage_key(out, stage.name) == key, env):
                say(f"{head} - done before with the same inputs, skipped")
                continue
            seconds, continued = _run_stage(stage, bench, key, head, say, quiet, env)
            if not continued:  # only whole stages tell how fast this machine runs the preset
                done_actual += seconds
                done_expected += estimate(cfg, stage) or seconds
    return out


def _run_stage(stage: Stage, bench: Bench, key: str, head: str, say, quiet: bool, env: Dist) -> tuple[float, bool]:
    """Run one stage into its folder and record it; returns (seconds, whether it continued a stopped run). Under
    `torchrun` rank 0 prepares and records the folder, and every rank runs the stage (the report: rank 0)."""
    folder = bench.out / stage.name
    continued = False
    if env.main:
        continued = _clear_stage(folder, key)  # a stopped run of this stage, continued: part of it is done
        write_json(folder / STARTED, {"key": key})
    continued = broadcast(continued, env)
    say(head + (" - continuing" if continued else ""))
    t0 = time.perf_counter()
    if env.main or stage.parallel:
        stage.run(bench, progress=not quiet)
    barrier(env)
    seconds = time.perf_counter() - t0
    if env.main:
        done_key = _digest(stage.inputs(bench)) if stage is BY_NAME["report"] else key
        record = {"key": done_key, "seconds": seconds, "continued": continued, "git_sha": git_sha()}
        write_json(folder / "stage.json", record)
    barrier(env)
    say(f"  {stage.name} done in {_fmt(seconds)}" + (" (this session's part)" if continued else ""))
    return seconds, continued
