"""Typed results of classification fine-tuning (segmentation's: `finetune.seg_results`), and their results.json /
results.md / predictions.npz and rich table. Writers never change the results they are given."""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minr.checkpoint import read_meta, short_name
from minr.io import atomic_write_bytes, atomic_write_text, write_json
from probes.stats import Paired
from probes.tables import markdown_table, over_seeds, print_table, rate, signed_pct


@dataclass(frozen=True)
class FinetuneEntry:
    """One checkpoint fine-tuned for classification: test accuracy over seeds."""

    name: str
    ckpt: str
    family: str
    mean: float
    std: float
    per_seed: list[float]
    val_accuracy: list[float]
    steps: int
    train_images_per_s: float | None


@dataclass(frozen=True)
class FinetuneResults:
    task: str  # "classification"
    config: dict[str, Any]
    entries: list[FinetuneEntry]
    paired: list[Paired]
    evaluated_images: int  # test images
    runtime_s: float
    git_sha: str
    hardware: dict[str, Any]
    dataset: str | None = None


def run_name(ckpt: str, taken: set[str], given: str | None = None) -> tuple[str, str]:
    """A short unique name for a checkpoint (`given`, else its model's) and its family."""
    if given:
        taken.add(given)
    return given or short_name(ckpt, taken), read_meta(ckpt)["family"]


def _columns(results: FinetuneResults) -> tuple[list[str], list[list[str]]]:
    head = ["model", "test accuracy % (mean ± std over seeds)", "train img/s"]
    rows = [[e.name, over_seeds(e.mean, e.std, len(e.per_seed)), rate(e.train_images_per_s)] for e in results.entries]
    return head, rows


def markdown(results: FinetuneResults) -> str:
    head, rows = _columns(results)
    parts = [f"# {results.task}\n", markdown_table(head, rows)]
    if results.paired:
        test = "McNemar" if results.paired[0].test == "mcnemar" else "Wilcoxon signed-rank"
        paired = [
            [p.a, p.b, signed_pct(p.diff), f"[{signed_pct(p.ci_low)}, {signed_pct(p.ci_high)}]", f"{p.p:.3g}"]
            for p in results.paired
        ]
        parts += [
            f"## Paired MINR - MAE ({results.paired[0].metric} per image; bootstrap 95% CI; {test})\n",
            markdown_table(["MINR", "MAE", "diff (pts)", "95% CI", "p"], paired),
        ]
    return "\n".join(parts)


def write_files(out: Path, results: Any, text: str, arrays: dict[str, np.ndarray]) -> None:
    """results.json (the typed results as they are), results.md (`text`) and predictions.npz into `out`."""
    write_json(out / "results.json", dataclasses.asdict(results))
    atomic_write_text(out / "results.md", text)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())


def write_results(results: FinetuneResults, out: Path, arrays: dict[str, np.ndarray]) -> None:
    """results.json, results.md and predictions.npz (per-image predictions) into `out`; print the table."""
    write_files(out, results, markdown(results), arrays)
    print_table(*_columns(results), title=results.task)
