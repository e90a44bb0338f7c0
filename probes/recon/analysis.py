"""What the reconstruction measurements say: paired MINR - MAE tests per condition, each model's robustness to the
mask ratio and kind (with intervals), whether MINR's drops are smaller than MAE's (paired on the same images),
the transfer matrix and every model's margin over the best floor. Every verdict is computed, never written."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from minr.metrics import PROTOCOLS
from probes.recon.evaluate import Collected, PairedCell, ReconConfig, ReconEntry, by_family, comparable, key
from probes.stats import Paired, bootstrap_mean, compare

HEADLINE = ("random", 0.75)  # the paper's condition: 75% random masking


@dataclass(frozen=True)
class Drop:
    """How much an entry's PSNR falls from an easy to a hard condition, per image: mean and 95% interval."""

    name: str
    dataset: str
    protocol: str
    change: str  # "ratio 0.5->0.9 (random)" or "random->block (0.75)"
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Verdict:
    """MINR's drop minus MAE's drop on the same images; `text` says what it means."""

    minr: str
    mae: str
    dataset: str
    protocol: str
    change: str
    comparison: Paired
    text: str


@dataclass(frozen=True)
class TransferCell:
    model: str
    trained_on: str
    evaluated_on: str
    protocol: str
    mean: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Margin:
    """An entry's PSNR minus the best floor's, at the headline condition."""

    name: str
    dataset: str
    protocol: str
    best_floor: str
    margin: float


def nearest(values: tuple[float, ...], target: float) -> float:
    return min(values, key=lambda v: abs(v - target))


def headline_condition(cfg: ReconConfig) -> tuple[str, float]:
    """The condition of the headline tables, margins, transfer matrix and grids: the paper's 75% random masking,
    or the nearest this run measured (another kind when random is not among them)."""
    return condition_of(cfg.mask_kinds, cfg.mask_ratios)


def condition_of(mask_kinds: Sequence[str], mask_ratios: Sequence[float]) -> tuple[str, float]:
    """`headline_condition` from the kinds and ratios alone, as a results file stores them."""
    kind = HEADLINE[0] if HEADLINE[0] in mask_kinds else mask_kinds[0]
    return kind, nearest(tuple(mask_ratios), HEADLINE[1])


def condition_words(kind: str, ratio: float) -> str:
    """A condition as every title says it: "75% random masking"."""
    return f"{ratio * 100:g}% {kind} masking"


def condition_title(cfg: ReconConfig) -> str:
    """The headline condition in words."""
    return condition_words(*headline_condition(cfg))


def _mean(cell) -> float:
    """A cell's mean for ranking: an undefined one ranks last."""
    return cell.mean if cell.n else float("-inf")


def changes(cfg: ReconConfig) -> list[tuple[str, tuple[str, float], tuple[str, float]]]:
    """The two robustness questions this run can answer: (label, easy condition, hard condition)."""
    out = []
    lo, hi = min(cfg.mask_ratios), max(cfg.mask_ratios)
    if "random" in cfg.mask_kinds and lo < hi:
        out.append((f"ratio {lo:g}->{hi:g} (random)", ("random", lo), ("random", hi)))
    mid = nearest(cfg.mask_ratios, 0.75)
    if "random" in cfg.mask_kinds and "block" in cfg.mask_kinds:
        out.append((f"random->block ({mid:g})", ("random", mid), ("block", mid)))
    return out


def per_image_drop(got: Collected, name: str, dataset: str, protocol: str, easy, hard) -> np.ndarray:
    return got.arrays[key(name, dataset, *easy, protocol)] - got.arrays[key(name, dataset, *hard, protocol)]


def paired_cells(cfg: ReconConfig, got: Collected) -> list[PairedCell]:
    """Every comparable MINR x MAE pair in every condition and protocol."""
    out = []
    for a in by_family(got.entries, "minr"):
        for b in (b for b in by_family(got.entries, "mae") if comparable(a, b)):
            for dataset in cfg.datasets:
                for kind in cfg.mask_kinds:
                    for ratio in cfg.mask_ratios:
                        for p in PROTOCOLS:
                            va, vb = (got.arrays[key(e.name, dataset, kind, ratio, p)] for e in (a, b))
                            c = compare(
                                a.name, va, b.name, vb, method=f"{dataset} {kind} {ratio:g}", metric=f"PSNR {p}"
                            )
                            out.append(PairedCell(dataset, kind, ratio, p, c))
    return out


def drops(cfg: ReconConfig, got: Collected) -> list[Drop]:
    out = []
    for e in got.entries:
        for dataset in cfg.datasets:
            for label, easy, hard in changes(cfg):
                for p in PROTOCOLS:
                    mean, lo, hi = bootstrap_mean(per_image_drop(got, e.name, dataset, p, easy, hard))
                    out.append(Drop(e.name, dataset, p, label, mean, lo, hi))
    return out


def verdicts(cfg: ReconConfig, got: Collected) -> list[Verdict]:
    """Is MINR's drop smaller than MAE's? Paired per image (drop_MINR - drop_MAE), Wilcoxon and bootstrap."""
    out = []
    for a in by_family(got.entries, "minr"):
        for b in (b for b in by_family(got.entries, "mae") if comparable(a, b)):
            for dataset in cfg.datasets:
                for label, easy, hard in changes(cfg):
                    for p in PROTOCOLS:
                        da, db = (per_image_drop(got, e.name, dataset, p, easy, hard) for e in (a, b))
                        c = compare(a.name, da, b.name, db, method=label, metric=f"PSNR drop {p}")
                        out.append(Verdict(a.name, b.name, dataset, p, label, c, verdict_text(c, label, p, dataset)))
    return out


def verdict_text(c: Paired, change: str, protocol: str, dataset: str) -> str:
    interval = f"{c.diff:+.2f} dB [{c.ci_low:+.2f}, {c.ci_high:+.2f}], p = {c.p:.2g}"
    where = f"on {dataset}, {protocol} PSNR, {change}"
    if c.significant and c.diff < 0:
        return f"{c.a} drops less than {c.b} {where}: {interval}."
    if c.significant and c.diff > 0:
        return f"{c.a} drops more than {c.b} {where}: {interval}."
    return f"{c.a} and {c.b} drop alike {where} (no significant difference: {interval})."


def transfer(cfg: ReconConfig, got: Collected) -> list[TransferCell]:
    """The paper's Table 2 layout: each checkpoint's pretraining set against every evaluation set, at the headline
    condition."""
    kind, ratio = headline_condition(cfg)
    out = []
    for e in got.entries:
        if e.family == "floor":
            continue
        for dataset in cfg.datasets:
            for p in PROTOCOLS:
                c = e.cell(dataset, kind, ratio, p)
                out.append(TransferCell(e.name, e.trained_on, dataset, p, c.mean, c.ci_low, c.ci_high))
    return out


def margins(cfg: ReconConfig, got: Collected) -> list[Margin]:
    """Each entry's margin over its best floor at the headline condition; none where the PSNR is undefined."""
    kind, ratio = headline_condition(cfg)
    floors = by_family(got.entries, "floor")
    out = []
    for e in (e for e in got.entries if e.family != "floor"):
        mine = [
            f for f in floors if (f.image_size, f.in_chans, f.mask_patch) == (e.image_size, e.in_chans, e.mask_patch)
        ]
        for dataset in cfg.datasets:
            for p in PROTOCOLS:
                best = max(mine, key=lambda f: _mean(f.cell(dataset, kind, ratio, p)), default=None)
                if best is None or not e.cell(dataset, kind, ratio, p).n or not best.cell(dataset, kind, ratio, p).n:
                    continue
                margin = e.cell(dataset, kind, ratio, p).mean - best.cell(dataset, kind, ratio, p).mean
                out.append(Margin(e.name, dataset, p, best.name, margin))
    return out


def headline(entries: list[ReconEntry], cfg: ReconConfig, dataset: str) -> list[list[str]]:
    """Rows of the headline table: entry, then mean [95% CI] per protocol at the headline condition."""
    kind, ratio = headline_condition(cfg)
    return [
        [e.name, e.trained_on or "-", *(e.cell(dataset, kind, ratio, p).text() for p in PROTOCOLS)] for e in entries
    ]
