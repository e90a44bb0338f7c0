"""Probe reports from typed results: results.json (everything), results.md, rich tables, per-image predictions and
the test-time-masking plot, all written atomically. Nothing here changes the results it is given."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np

from minr.io import atomic_write_bytes, atomic_write_text, write_json
from probes.results import ProbeEntry, ProbeResults, Score, SweepPoint, best_entries
from probes.stats import Paired
from probes.tables import markdown_table, pct, print_table, signed_pct

ENTRY_HEADERS = ("encoder:feature", "dim", "val linear %", "linear probe acc %", "k-NN acc %", "chosen on val")
PAIRED_HEADERS = ("MINR", "MAE", "method", "diff (pts)", "95% CI", "McNemar p")


def acc(score: Score | None) -> str:
    """'81.20 ± 0.31 (n=3)' over seeds; the mean alone for one seed."""
    if score is None:
        return ""
    seeds = len(score.per_seed or [])
    return f"{pct(score.mean)} ± {pct(score.std)} (n={seeds})" if seeds > 1 else pct(score.mean)


def entry_rows(entries: list[ProbeEntry], best: dict[str, str] | None = None) -> list[list[str]]:
    """One row per (encoder, kind); 'yes' marks each encoder's kind chosen on validation."""
    chosen = set((best if best is not None else best_entries(entries)).values())
    return [
        [
            e.name,
            str(e.feature_dim),
            pct((e.linear or e.knn).val if (e.linear or e.knn) else None),
            acc(e.linear),
            acc(e.knn),
            "yes" if e.name in chosen else "",
        ]
        for e in entries
    ]


def paired_rows(paired: list[Paired]) -> list[list[str]]:
    return [
        [p.a, p.b, p.method, signed_pct(p.diff), f"[{signed_pct(p.ci_low)}, {signed_pct(p.ci_high)}]", f"{p.p:.3g}"]
        for p in paired
    ]


def markdown(results: ProbeResults) -> str:
    tag = (
        " (hyper-parameters selected on TEST: optimistic, for reproducing papers only)"
        if results.selected_on == "test"
        else ""
    )
    parts = [
        f"# Classification probes{tag}\n",
        f"Test images: {results.test_images}, classes: {results.num_classes}, seeds: {results.config['seeds']}, "
        f"selection on: {results.selected_on}\n",
        markdown_table(ENTRY_HEADERS, entry_rows(results.entries, results.best)),
    ]
    if results.paired:
        parts += [
            "## Paired MINR - MAE (same test images; bootstrap 95% CI; exact McNemar)\n",
            markdown_table(PAIRED_HEADERS, paired_rows(results.paired)),
        ]
    if results.mask_sweep:
        rows = [[r.name, r.method, f"{r.mask_ratio:.2f}", pct(r.accuracy)] for r in results.mask_sweep]
        parts += [
            "## Test-time masking (probe trained on clean features)\n",
            markdown_table(("encoder:feature", "method", "mask ratio", "acc %"), rows),
        ]
    return "\n".join(parts)


def print_results(results: ProbeResults) -> None:
    title = "classification probes" + (" [selected on TEST]" if results.selected_on == "test" else "")
    print_table(ENTRY_HEADERS, entry_rows(results.entries, results.best), title=title)
    if results.paired:
        print_table(PAIRED_HEADERS, paired_rows(results.paired), title="paired MINR - MAE")


def plot_mask_sweep(rows: list[SweepPoint], entries: list[ProbeEntry], path: Path) -> None:
    """Accuracy against the test-time mask ratio: one colour per encoder (its best feature kind), solid for the
    linear probe, dashed for k-NN. Every kind stays in the tables."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = set(best_entries(entries).values())
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colours = {}
    for name in [e.name for e in entries if e.name in shown]:
        for method, style in (("linear", "-"), ("knn", "--")):
            pts = sorted((r.mask_ratio, r.accuracy) for r in rows if r.name == name and r.method == method)
            if not pts:
                continue
            line = ax.plot(
                *zip(*pts, strict=True), style, marker="o", color=colours.get(name), label=f"{name} ({method})"
            )
            colours[name] = line[0].get_color()
    ax.set_xlabel("test-time mask ratio (probe trained on clean features)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Frozen features under test-time masking (best feature per encoder)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_reports(results: ProbeResults, predictions: dict[str, np.ndarray], labels: np.ndarray, out: Path) -> None:
    write_json(out / "results.json", dataclasses.asdict(results))
    atomic_write_text(out / "results.md", markdown(results))
    buf = io.BytesIO()
    np.savez(buf, labels=labels, **predictions)
    atomic_write_bytes(out / "predictions.npz", buf.getvalue())
    if results.mask_sweep:
        plot_mask_sweep(results.mask_sweep, results.entries, out / "mask_sweep.png")
    print_results(results)
