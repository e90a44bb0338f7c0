"""results.json / results.md / predictions.npz and a rich table for fine-tuning and segmentation runs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from minr.checkpoint import atomic_write_bytes, atomic_write_text, git_sha
from probes.report import hardware

console = Console()


def _pct(mean: float, std: float | None = None) -> str:
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def write_results(
    results: dict[str, Any],
    out: Path,
    labels: np.ndarray | None = None,
    columns: tuple[tuple[str, str], ...] = (("mean", "test accuracy %"),),
) -> None:
    """Write everything; entries' private `_runs` keep per-sample predictions, which go to predictions.npz."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for e in results["entries"]:
        for s, r in enumerate(e.pop("_runs", [])):
            if "predictions" in r:
                arrays[f"{e['name']}|seed{s}"] = r["predictions"]
    if labels is not None:
        buf = io.BytesIO()
        np.savez(buf, labels=labels, **arrays)
        atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    results["git_sha"], results["hardware"] = git_sha(), hardware()
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    head = ["model", *(t for _, t in columns), "images/s"]
    lines = [f"# {results['task']}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table = Table(*head, title=results["task"])
    for e in results["entries"]:
        cells = [
            e["name"],
            *(_pct(e[k], e.get("std") if k == "mean" else None) for k, _ in columns),
            f"{e.get('train_images_per_s') or 0:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
        table.add_row(*cells)
    if results.get("paired"):
        lines += [
            "",
            "## Paired MINR - MAE (bootstrap 95% CI)",
            "",
            "| MINR | MAE | diff (pts) | 95% CI | p |",
            "|---|---|---|---|---|",
        ]
        for p in results["paired"]:
            pval = f"{p['mcnemar_p']:.3g}" if "mcnemar_p" in p else "n/a (per-image IoU)"
            lines.append(
                f"| {p['a']} | {p['b']} | {100 * p['diff']:+.2f} | [{100 * p['ci_low']:+.2f}, "
                f"{100 * p['ci_high']:+.2f}] | {pval} |"
            )
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    console.print(table)
