"""Typed results of fine-tuning and segmentation, and their results.json / results.md / predictions.npz and rich
table. Writers never change the results they are given."""

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
from probes.tables import markdown_table, pct, print_table, signed_pct


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
class SegEntry:
    """One checkpoint x backbone feature trained for segmentation: mIoU (a fraction) over seeds, and the rest."""

    name: str
    ckpt: str
    family: str
    feature: str
    mean: float
    std: float
    per_seed: list[float]
    mAcc: float
    aAcc: float
    per_class_IoU: dict[str, float]
    train_images_per_s: float | None
    first_loss: float | None  # of this session's steps: a resumed run that had finished has none
    last_loss: float | None


@dataclass(frozen=True)
class FinetuneResults:
    task: str  # "classification" or "segmentation"
    config: dict[str, Any]
    entries: list[FinetuneEntry] | list[SegEntry]
    paired: list[Paired]
    evaluated_images: int  # test images (classification) or val images (segmentation)
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
    if results.task == "segmentation":
        head = ["model:feature", "mIoU (mean ± std)", "mAcc", "aAcc", "train img/s"]
        rows = [
            [e.name, f"{pct(e.mean)} ± {pct(e.std)}", pct(e.mAcc), pct(e.aAcc), f"{e.train_images_per_s or 0:.0f}"]
            for e in results.entries
        ]
        return head, rows
    head = ["model", "test accuracy % (mean ± std)", "train img/s"]
    rows = [[e.name, f"{pct(e.mean)} ± {pct(e.std)}", f"{e.train_images_per_s or 0:.0f}"] for e in results.entries]
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


def write_results(results: FinetuneResults, out: Path, arrays: dict[str, np.ndarray]) -> None:
    """results.json, results.md and predictions.npz (per-image predictions or IoU) into `out`; print the table."""
    write_json(out / "results.json", dataclasses.asdict(results))
    atomic_write_text(out / "results.md", markdown(results))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    print_table(*_columns(results), title=results.task)
