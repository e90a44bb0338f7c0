"""Probe reports: results.json (everything), results.md, a rich table, per-sample predictions and the
test-time-masking plot, all written atomically into the output directory."""

from __future__ import annotations

import io
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from minr.checkpoint import atomic_write_bytes, atomic_write_text, git_sha

console = Console()


def hardware() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": torch.get_num_threads(),
    }


def _acc(r: dict[str, Any] | None) -> str:
    if not r:
        return ""
    return f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" if r.get("per_seed") else f"{100 * r['mean']:.2f}"


def markdown(results: dict[str, Any]) -> str:
    tag = (
        " (hyper-parameters selected on TEST, for paper reproduction only)" if results["selected_on"] == "test" else ""
    )
    lines = [
        f"# Classification probes{tag}",
        "",
        f"Test images: {results['test_images']}, classes: {results['num_classes']}, "
        f"seeds: {results['config']['seeds']}, selection on: {results['selected_on']}",
        "",
        "| encoder:feature | dim | linear probe acc % (mean ± std) | k-NN acc % |",
        "|---|---|---|---|",
    ]
    for e in results["entries"]:
        lines.append(f"| {e['name']} | {e['feature_dim']} | {_acc(e.get('linear'))} | {_acc(e.get('knn'))} |")
    if results["paired"]:
        lines += [
            "",
            "## Paired MINR - MAE (same test images; bootstrap 95% CI; exact McNemar)",
            "",
            "| MINR | MAE | method | diff (pts) | 95% CI | McNemar p |",
            "|---|---|---|---|---|---|",
        ]
        for p in results["paired"]:
            lines.append(
                f"| {p['a']} | {p['b']} | {p['method']} | {100 * p['diff']:+.2f} | "
                f"[{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}] | {p['mcnemar_p']:.3g} |"
            )
    if results["mask_sweep"]:
        lines += [
            "",
            "## Test-time masking (probe trained on clean features)",
            "",
            "| encoder:feature | method | mask ratio | acc % |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {r['method']} | {r['mask_ratio']:.2f} | {100 * r['accuracy']:.2f} |"
            for r in results["mask_sweep"]
        ]
    return "\n".join(lines) + "\n"


def print_table(results: dict[str, Any]) -> None:
    title = "classification probes" + (" [selected on TEST]" if results["selected_on"] == "test" else "")
    table = Table("encoder:feature", "dim", "linear %", "k-NN %", title=title)
    for e in results["entries"]:
        table.add_row(e["name"], str(e["feature_dim"]), _acc(e.get("linear")), _acc(e.get("knn")))
    console.print(table)
    if results["paired"]:
        pt = Table("MINR", "MAE", "method", "diff pts", "95% CI", "McNemar p", title="paired MINR - MAE")
        for p in results["paired"]:
            pt.add_row(
                p["a"],
                p["b"],
                p["method"],
                f"{100 * p['diff']:+.2f}",
                f"[{100 * p['ci_low']:+.2f}, {100 * p['ci_high']:+.2f}]",
                f"{p['mcnemar_p']:.3g}",
            )
        console.print(pt)


def plot_mask_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["name"], r["method"]) for r in rows}):
        pts = sorted((r["mask_ratio"], r["accuracy"]) for r in rows if (r["name"], r["method"]) == key)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{key[0]} ({key[1]})")
    ax.set_xlabel("test-time mask ratio")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_reports(results: dict[str, Any], entries, labels: np.ndarray, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    results["git_sha"], results["hardware"] = git_sha(), hardware()
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=str))
    atomic_write_text(out / "results.md", markdown(results))
    arrays = {"labels": labels, **{f"{e.name}|{k}": v for e in entries for k, v in e.predictions.items()}}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    if results["mask_sweep"]:
        plot_mask_sweep(results["mask_sweep"], out / "mask_sweep.png")
    print_table(results)
