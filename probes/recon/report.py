"""The reconstruction evaluation's outputs: results.json (every number, config, checkpoint hashes, git sha),
per_image.npz (every per-image PSNR), results.md, figures a reader understands without the code (PSNR against mask
ratio, the transfer matrix as a heat map, reconstruction grids with column titles), and `run_reconstruct`.

results.json is written last, so a run that stopped early never leaves a result that looks complete.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minr.build import encoder_skeleton
from minr.config import DataConfig
from minr.data import data_inputs
from minr.io import atomic_write_bytes, atomic_write_text, git_sha, output_location, write_json
from minr.metrics import PROTOCOLS
from minr.run import main_locked
from minr.runtime import distributed_device, hardware
from probes.recon import analysis
from probes.recon.evaluate import (
    Collected,
    PairedCell,
    ReconConfig,
    ReconEntry,
    check_exact_counts,
    entry_names,
    run_conditions,
)
from probes.stats import pairs_text
from probes.tables import markdown_table, print_table

PROTOCOL_TITLES = {"full": "full image", "pasted": "pasted (visible pixels from the input)", "masked": "masked region"}


@dataclass(frozen=True)
class ReconResults:
    config: dict[str, Any]
    entries: list[ReconEntry]
    paired: list[PairedCell]
    drops: list[analysis.Drop]
    verdicts: list[analysis.Verdict]
    transfer: list[analysis.TransferCell]
    margins: list[analysis.Margin]
    runtime_s: float
    git_sha: str
    hardware: dict[str, Any]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_ratio_curves(results: ReconResults, cfg: ReconConfig, out: Path) -> list[Path]:
    """PSNR against mask ratio: a figure per (dataset, mask kind), a panel per protocol, a line per entry with
    95% interval bars; floors dashed and grey."""
    plt, paths = _figure(), []
    for dataset in cfg.datasets:
        for kind in cfg.mask_kinds:
            fig, axes = plt.subplots(1, len(PROTOCOLS), figsize=(4.2 * len(PROTOCOLS), 3.6), sharey=False)
            for ax, p in zip(axes, PROTOCOLS, strict=True):
                for e in results.entries:
                    cells = sorted(
                        (c for c in e.cells if (c.dataset, c.kind, c.protocol) == (dataset, kind, p)),
                        key=lambda c: c.ratio,
                    )
                    x, y = [c.ratio for c in cells], [c.mean for c in cells]
                    err = [[c.mean - c.ci_low for c in cells], [c.ci_high - c.mean for c in cells]]
                    style = (
                        {"linestyle": "--", "color": "grey", "alpha": 0.7} if e.family == "floor" else {"marker": "o"}
                    )
                    ax.errorbar(x, y, yerr=err, capsize=2, label=e.name, **style)
                ax.set_title(PROTOCOL_TITLES[p], fontsize=9)
                ax.set_xlabel(f"mask ratio ({kind} masking)")
                ax.set_ylabel("PSNR (dB)")
                ax.grid(alpha=0.3)
            axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
            fig.suptitle(f"Reconstruction of {dataset} ({cfg.split}) against the mask ratio", fontsize=10)
            path = out / f"psnr_vs_ratio_{dataset.replace(':', '_').replace('/', '_')}_{kind}.png"
            _save(fig, plt, path)
            paths.append(path)
    return paths


def plot_transfer(results: ReconResults, cfg: ReconConfig, out: Path) -> Path | None:
    """The transfer matrix as heat maps with values: rows = model (pretraining set), columns = evaluation set."""
    if not results.transfer:
        return None
    plt = _figure()
    rows = list(dict.fromkeys(f"{c.model} ({c.trained_on})" for c in results.transfer))
    cols = list(dict.fromkeys(c.evaluated_on for c in results.transfer))
    fig, axes = plt.subplots(
        1, len(PROTOCOLS), figsize=(1.6 + 1.7 * len(cols) * len(PROTOCOLS), 0.8 + 0.45 * len(rows))
    )
    for ax, p in zip(axes, PROTOCOLS, strict=True):
        grid = np.full((len(rows), len(cols)), np.nan)
        for c in (c for c in results.transfer if c.protocol == p):
            grid[rows.index(f"{c.model} ({c.trained_on})"), cols.index(c.evaluated_on)] = c.mean
        ax.imshow(grid, cmap="viridis", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(cols)):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
        ax.set_xticks(range(len(cols)), cols, rotation=30, fontsize=7)
        ax.set_yticks(range(len(rows)), rows if ax is axes[0] else [""] * len(rows), fontsize=7)
        ax.set_title(f"PSNR, {PROTOCOL_TITLES[p]}", fontsize=8)
        ax.set_xlabel("evaluated on")
    axes[0].set_ylabel("model (pretrained on)")
    fig.suptitle(f"Transfer at {analysis.condition_title(cfg)} (dB)", fontsize=10)
    path = out / "transfer_matrix.png"
    _save(fig, plt, path)
    return path


def markdown(results: ReconResults, cfg: ReconConfig) -> str:
    """results.md: the headline tables per dataset, margins over the floors, robustness verdicts, drops, the
    transfer matrix and the paired MINR - MAE tests."""
    condition = analysis.condition_title(cfg)
    parts = [
        f"# Reconstruction: {', '.join(cfg.datasets)} ({cfg.split}, up to {cfg.max_images} images, seed {cfg.seed})\n",
        "Per-image PSNR (dB), mean [bootstrap 95% interval]. full: the raw reconstruction; pasted: visible pixels "
        "from the input; masked: the masked region only. Floors learn nothing. An image with no masked pixel has "
        "no masked or pasted PSNR: it is left out of those means, and tables say how many were.\n",
    ]
    for dataset in cfg.datasets:
        parts += [f"## {dataset}, {condition}\n"]
        rows = analysis.headline(results.entries, cfg, dataset)
        parts.append(markdown_table(["entry", "pretrained on", *PROTOCOLS], rows))
    if results.margins:
        rows = [[m.name, m.dataset, m.protocol, m.best_floor, f"{m.margin:+.2f}"] for m in results.margins]
        parts += [
            f"## Margin over the best floor ({condition})\n",
            markdown_table(["entry", "dataset", "protocol", "best floor", "margin dB"], rows),
        ]
    if results.verdicts:
        parts += ["## Robustness: is MINR's drop smaller than MAE's? (paired on the same images)\n"]
        parts += [f"- {v.text}" for v in results.verdicts]
        parts.append("")
    if results.drops:
        rows = [
            [d.name, d.dataset, d.change, d.protocol, f"{d.mean:.2f} [{d.ci_low:.2f}, {d.ci_high:.2f}]"]
            for d in results.drops
        ]
        parts += [
            "## PSNR drops per entry\n",
            markdown_table(["entry", "dataset", "change", "protocol", "drop dB [95% CI]"], rows),
        ]
    if results.transfer:
        parts += [f"## Transfer matrix ({condition}; full/pasted/masked dB)\n", _transfer_table(results.transfer)]
    if results.paired:
        parts += ["## Paired MINR - MAE per condition\n", _paired_table(results.paired)]
    return "\n".join(parts)


def _transfer_table(transfer: list[analysis.TransferCell]) -> str:
    """Rows: model (pretraining set); columns: evaluation set; cells: full/pasted/masked PSNR."""
    cols = list(dict.fromkeys(c.evaluated_on for c in transfer))
    rows = []
    for model in dict.fromkeys((c.model, c.trained_on) for c in transfer):
        cell = {(c.evaluated_on, c.protocol): c.mean for c in transfer if (c.model, c.trained_on) == model}
        rows.append([f"{model[0]} ({model[1]})", *("/".join(f"{cell[(d, p)]:.2f}" for p in PROTOCOLS) for d in cols)])
    return markdown_table(["model (pretrained on)", *cols], rows)


def _paired_table(paired: list[PairedCell]) -> str:
    rows = [
        [
            c.comparison.a,
            c.comparison.b,
            c.dataset,
            c.kind,
            f"{c.ratio:g}",
            c.protocol,
            f"{c.comparison.diff:+.2f}",
            f"[{c.comparison.ci_low:+.2f}, {c.comparison.ci_high:+.2f}]",
            f"{c.comparison.p:.2g}" if c.comparison.p is not None else "-",
            pairs_text(c.comparison),
        ]
        for c in paired
    ]
    headers = ["MINR", "MAE", "dataset", "kind", "ratio", "protocol", "diff dB", "95% CI", "Wilcoxon p", "images"]
    return markdown_table(headers, rows)


def run_reconstruct(cfg: ReconConfig, out_dir: str | Path, *, progress: bool = True) -> ReconResults:
    """Measure, analyse and write everything into `out_dir`."""
    from probes.recon.grid import check_render_size, titled_grids

    names = entry_names(cfg.ckpts)  # every checkpoint is checked (header) before anything is written
    check_exact_counts(cfg)
    first = encoder_skeleton(cfg.ckpts[0])[0]
    check_render_size(cfg.scale, first.image_size, first.in_chans, cfg.grid_images * (len(cfg.ckpts) + 3))
    inputs = [*cfg.ckpts, *(p for d in cfg.datasets for p in data_inputs(DataConfig(name=d)))]
    out, t0 = output_location(out_dir, inputs=inputs), time.perf_counter()
    with main_locked(out, distributed_device(cfg.device)[1], inputs=inputs) as main:
        if main:
            (out / "results.json").unlink(missing_ok=True)  # what is there no longer describes this run
        got: Collected = run_conditions(cfg, names, progress)
        results = ReconResults(
            config=dataclasses.asdict(cfg),
            entries=got.entries,
            paired=analysis.paired_cells(cfg, got),
            drops=analysis.drops(cfg, got),
            verdicts=analysis.verdicts(cfg, got),
            transfer=analysis.transfer(cfg, got),
            margins=analysis.margins(cfg, got),
            runtime_s=time.perf_counter() - t0,
            git_sha=git_sha(),
            hardware=hardware(),
        )
        if not main:
            return results
        buf = io.BytesIO()
        np.savez_compressed(buf, **got.arrays)
        atomic_write_bytes(out / "per_image.npz", buf.getvalue())
        atomic_write_text(out / "results.md", markdown(results, cfg))
        plot_ratio_curves(results, cfg, out)
        plot_transfer(results, cfg, out)
        titled_grids(cfg, names, out)
        write_json(out / "results.json", dataclasses.asdict(results))
    for dataset in cfg.datasets:
        print_table(
            ["entry", "pretrained on", *PROTOCOLS],
            analysis.headline(results.entries, cfg, dataset),
            title=f"{dataset}: PSNR at {analysis.condition_title(cfg)}",
        )
    return results
