"""Paired comparisons of two classifiers on the same test images."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def mcnemar_p(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (a right & b wrong vs a wrong & b right)."""
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def paired_bootstrap(
    correct_a: np.ndarray, correct_b: np.ndarray, *, n: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Accuracy difference a - b and its percentile bootstrap interval, resampling test images in pairs."""
    a, b = correct_a.astype(np.float64), correct_b.astype(np.float64)
    diff = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n, len(diff)))
    boots = diff[idx].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return float(diff.mean()), float(lo), float(hi)


def compare(correct_a: np.ndarray, correct_b: np.ndarray, *, seed: int = 0) -> dict[str, float]:
    d, lo, hi = paired_bootstrap(correct_a, correct_b, seed=seed)
    return {"diff": d, "ci_low": lo, "ci_high": hi, "mcnemar_p": mcnemar_p(correct_a, correct_b)}
