"""Paired comparisons of two methods on the same test items, written once for every evaluation.

Binary outcomes (a probe's or a classifier's correct / wrong per image) get the exact McNemar test; continuous
ones (per-image IoU, per-image PSNR) the Wilcoxon signed-rank test. Both get the mean difference with a
percentile bootstrap interval that resamples the items in pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, wilcoxon


@dataclass(frozen=True)
class Paired:
    """a - b on the same `n` items: the mean difference, its 95% bootstrap interval and a test's p-value."""

    a: str
    b: str
    method: str
    metric: str
    n: int
    diff: float
    ci_low: float
    ci_high: float
    p: float | None
    test: str

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < 0.05 and (self.ci_low > 0 or self.ci_high < 0)


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (a right & b wrong vs a wrong & b right)."""
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of a - b; 1.0 when every pair is equal, None with no pairs."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    if len(d) == 0:
        return None
    if not d.any():
        return 1.0
    return float(wilcoxon(d).pvalue)


def bootstrap_mean(
    values: np.ndarray, *, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """The mean of `values` and its percentile bootstrap interval (items resampled with replacement)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n, len(v)))
    means = v[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(lo), float(hi)


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, *, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean difference a - b and its percentile bootstrap interval, resampling the items in pairs."""
    return bootstrap_mean(np.asarray(a, np.float64) - np.asarray(b, np.float64), n=n, seed=seed, level=level)


def compare(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray, *, method: str, metric: str) -> Paired:
    """a - b per item: boolean arrays (correct or not) get McNemar, numbers get Wilcoxon."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same items: {a.shape} vs {b.shape}")
    binary = a.dtype == bool and b.dtype == bool
    d, lo, hi = paired_bootstrap(a, b)
    p = mcnemar_p(a, b) if binary else wilcoxon_p(a, b)
    return Paired(a_name, b_name, method, metric, len(a), d, lo, hi, p, "mcnemar" if binary else "wilcoxon")


def minr_vs_mae(
    entries: Sequence[tuple[str, str, np.ndarray]],
    *,
    method: str,
    metric: str,
    groups: Sequence[object] | None = None,
) -> list[Paired]:
    """Every MINR entry against every MAE entry: `entries` are (name, family, per-item values). With `groups` (one
    per entry), only entries of the same group are compared, e.g. checkpoints at the same pretraining step."""
    group = list(groups) if groups is not None else [None] * len(entries)
    return [
        compare(na, va, nb, vb, method=method, metric=metric)
        for (na, fa, va), ga in zip(entries, group, strict=True)
        if fa == "minr"
        for (nb, fb, vb), gb in zip(entries, group, strict=True)
        if fb == "mae" and ga == gb
    ]
