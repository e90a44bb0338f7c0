"""What every stage of the bench is (`Stage`), the unit of work it plans (`Job`), and the helpers stages share.

A stage owns its part of the bench: what it does (one line), the library configs it runs (built from its section
of the `BenchConfig`; building them validates every value, so `validate` refuses a bad preset before anything
runs), the key of its inputs (a stage whose key is unchanged is skipped), `run`, `load` (its typed results, read
back from what it wrote), `work` (how much it does, to scale the time estimate when `--set` changes the budget),
`jobs` (its work for `--plan`) and `outcomes` (what the seed-level comparisons resample).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cli.bench.config import BenchConfig
from cli.bench.runs import Bench
from minr.config import to_dict
from minr.io import read_json
from minr.typed import from_plain


def weights_hashes(ckpts: list[str]) -> list[str]:
    from minr.checkpoint import stored_weights_sha256

    return [stored_weights_sha256(c) for c in ckpts]


def plain_settings(cfg: Any, *drop: str) -> dict[str, Any]:
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


def read_results(path: Path, cls: type) -> Any:
    return from_plain(cls, read_json(path, "a result"), str(path)) if path.is_file() else None


class Stage:
    name = ""
    does = ""
    parallel = True  # under torchrun every rank runs it (the library spreads the work); False: rank 0 alone

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
