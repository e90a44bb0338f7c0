"""Paired comparisons of two methods on the same test items, written once for every evaluation.

Binary outcomes (a probe's or a classifier's correct / wrong per image) get the exact McNemar test; continuous
ones (per-image IoU, per-image PSNR) the Wilcoxon signed-rank test. Both get the mean difference with a
percentile bootstrap interval that resamples the items in pairs. Several pretraining seeds of each method get
`seed_level`: the mean difference over seeds with an interval that counts both the seeds and the items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import binomtest, wilcoxon
from scipy.stats import t as student_t


@dataclass(frozen=True)
class Paired:
    """a - b on the same `n` items: the mean difference, its 95% bootstrap interval and a test's p-value.

    `n` counts the pairs where both values are defined; `excluded` the pairs left out because one is not (NaN: the
    masked PSNR of an image with no masked pixel), which every estimate and test here leaves out too."""

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
    excluded: int = 0

    @property
    def significant(self) -> bool:
        return self.p is not None and self.p < 0.05 and (self.ci_low > 0 or self.ci_high < 0)


def pairs_text(p: Paired) -> str:
    """How many pairs a comparison rests on, and how many undefined ones it left out: '24', '17 (7 undefined)'."""
    return f"{p.n} ({p.excluded} undefined)" if p.excluded else str(p.n)


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
    defined = len(a) if binary else int(np.isfinite(a.astype(np.float64) - b.astype(np.float64)).sum())
    test = "mcnemar" if binary else "wilcoxon"
    return Paired(a_name, b_name, method, metric, defined, d, lo, hi, p, test, excluded=len(a) - defined)


def minr_vs_mae(
    entries: Sequence[tuple[str, str, np.ndarray]],
    *,
    method: str,
    metric: str,
    groups: Sequence[object] | None = None,
) -> list[Paired]:
    """Every MINR entry against every MAE entry: `entries` are (name, family, per-item values). With `groups` (one
    per entry), only entries of the same group are compared, e.g. checkpoints at the same pretraining step."""
    return [
        compare(na, va, nb, vb, method=method, metric=metric) for na, va, nb, vb in _minr_mae_pairs(entries, groups)
    ]


def _minr_mae_pairs(entries: Sequence[tuple[str, str, Any]], groups: Sequence[object] | None):
    """(MINR name, its values, MAE name, its values) for every MINR x MAE pair of the same group."""
    group = list(groups) if groups is not None else [None] * len(entries)
    for (na, fa, va), ga in zip(entries, group, strict=True):
        for (nb, fb, vb), gb in zip(entries, group, strict=True):
            if fa == "minr" and fb == "mae" and ga == gb:
                yield na, va, nb, vb


# -- several pretraining seeds ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedLevel:
    """a - b over `seeds` pretraining seeds: the mean of the per-seed mean differences, its interval (seeds and
    items resampled), each seed's own difference, and how many seeds agree in sign with the mean."""

    a: str
    b: str
    method: str
    metric: str
    seeds: int
    n_items: tuple[int, ...]  # items per seed
    diff: float
    ci_low: float
    ci_high: float
    per_seed: tuple[float, ...]
    agree: int
    df: float  # the degrees of freedom of the interval's t quantile
    design: str  # "crossed": the same items under every seed; "nested": each seed its own items

    @property
    def established(self) -> bool:
        """The interval excludes zero, with at least two seeds: one seed says nothing about another seed."""
        return self.seeds >= 2 and (self.ci_low > 0 or self.ci_high < 0)


def seed_level(
    a_name: str,
    a: Sequence[np.ndarray],
    b_name: str,
    b: Sequence[np.ndarray],
    *,
    method: str,
    metric: str,
    shared_items: bool = True,
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> SeedLevel:
    """a - b from `a[s]`, `b[s]`: seed s's per-item values (bool correct / wrong, or numbers) on the same items.

    The estimate is the mean over seeds of each seed's mean difference: its error has a seed part (another
    pretraining seed moves every item's difference: init, data order, masks) and an item part (other test images).
    An item bootstrap of one seed, or of the seeds pooled, sees only the second and calls seed noise an effect.
    Here each of `n` resamples draws the seeds with replacement and then the items: with `shared_items` (every
    seed scored on the same test set, item i the same image in every seed) one item resample serves all seeds,
    the two-way "pigeonhole" bootstrap of crossed designs (Owen 2007; mildly conservative, it counts the seed x
    item noise more than once) -- an image that favours a under every seed is one observation, not one per seed;
    otherwise each resampled seed gets its own item resample (nested). The interval is the estimate +- t * the
    resamples' standard deviation, with Welch-Satterthwaite degrees of freedom from the seed and item parts: with
    3-5 seeds the resamples' percentiles cannot reach past the spread of the seeds' own means, and cover 88% of
    true differences when the seed part dominates; the t quantile (4.3 at 2 degrees of freedom) gives 95-98% in
    every setting of tests/test_stats.py. With one seed the interval is that run's item interval and `established`
    stays False: it speaks of one pretraining run, not of the method.
    """
    diffs, rng = _seed_diffs(a, b), np.random.default_rng(seed)
    boot, means, item_part, n_items = (_crossed if shared_items else _nested)(diffs, n, rng)
    s_count = len(means)
    seed_part = (means.var(ddof=1) / s_count, s_count - 1) if s_count > 1 else (0.0, 0)
    df = _satterthwaite(seed_part, item_part)
    diff = float(means.mean())
    half = float(student_t.ppf((1 + level) / 2, df) * boot.std(ddof=1))
    agree = int(np.sum(np.sign(means) == np.sign(diff))) if diff != 0 else 0
    return SeedLevel(
        a_name,
        b_name,
        method,
        metric,
        s_count,
        n_items,
        diff,
        diff - half,
        diff + half,
        tuple(float(m) for m in means),
        agree,
        float(df),
        "crossed" if shared_items else "nested",
    )


def minr_vs_mae_seeds(
    entries: Sequence[tuple[str, str, Sequence[np.ndarray]]],
    *,
    method: str,
    metric: str,
    groups: Sequence[object] | None = None,
    shared_items: bool = True,
) -> list[SeedLevel]:
    """`minr_vs_mae` over pretraining seeds: `entries` are (name, family, per-seed per-item values), the seeds in
    the same order for every entry (seed s of a MINR model shares masks and data order with seed s of MAE)."""
    return [
        seed_level(na, va, nb, vb, method=method, metric=metric, shared_items=shared_items)
        for na, va, nb, vb in _minr_mae_pairs(entries, groups)
    ]


class _Resampled(NamedTuple):
    boot: np.ndarray  # (n,) the estimate under each resample
    seed_means: np.ndarray  # (S,) each seed's mean difference
    item_part: tuple[float, int]  # the item part of the estimate's variance, and its degrees of freedom
    n_items: tuple[int, ...]  # items per seed


def _seed_diffs(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"seed-level comparison needs the same seeds for both, at least one: {len(a)} vs {len(b)}")
    out = []
    for s, (va, vb) in enumerate(zip(a, b, strict=True)):
        va, vb = np.asarray(va), np.asarray(vb)
        if va.shape != vb.shape or va.ndim != 1 or len(va) < 2:
            raise ValueError(f"seed {s}: a paired comparison needs the same >= 2 items: {va.shape} vs {vb.shape}")
        out.append(va.astype(np.float64) - vb.astype(np.float64))
    return out


def _item_means(cols: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, S) column means of `cols` (N, S) over `n` resamples of its N rows, one resample shared by all columns.

    Rows that repeat (binary outcomes: at most 3**S distinct rows of -1/0/1) are drawn as multinomial counts of
    the distinct rows, the same distribution at a fraction of the cost; otherwise rows are drawn in chunks."""
    N = len(cols)
    rows, mult = np.unique(cols, axis=0, return_counts=True)
    if len(rows) * 8 <= N:
        return rng.multinomial(N, mult / N, size=n) @ rows / N
    chunk = max(1, 2**22 // cols.size)  # memory: chunk x N x S gathered values at a time
    return np.concatenate([cols[rng.integers(0, N, (min(chunk, n - i), N))].mean(1) for i in range(0, n, chunk)])


def _crossed(diffs: list[np.ndarray], n: int, rng: np.random.Generator) -> _Resampled:
    """The same items under every seed: one item resample per bootstrap row serves all seeds, then the seeds are
    resampled. The item part of the error is the variance of the items' means over seeds."""
    if len({len(d) for d in diffs}) > 1:
        raise ValueError(f"shared items need the same items under every seed, got {[len(d) for d in diffs]} items")
    d = np.stack(diffs)  # (S, N)
    d = d[:, np.isfinite(d).all(0)]  # an item missing under one seed is dropped under all
    seed_means = _item_means(d.T, n, rng)  # (n, S)
    pick = rng.integers(0, len(d), seed_means.shape)
    boot = np.take_along_axis(seed_means, pick, 1).mean(1)
    return _Resampled(boot, d.mean(1), (d.mean(0).var(ddof=1) / d.shape[1], d.shape[1] - 1), (d.shape[1],) * len(d))


def _nested(diffs: list[np.ndarray], n: int, rng: np.random.Generator) -> _Resampled:
    """Each seed its own items: every drawn seed gets its own item resample. A seed's mean then carries its own
    items' noise, so the spread of the seeds' means is the whole error (with one seed: its items' error)."""
    diffs = [v[np.isfinite(v)] for v in diffs]
    pick = rng.integers(0, len(diffs), (n, len(diffs)))
    slots = np.empty(pick.shape)
    for s, d in enumerate(diffs):  # a loop over seeds only: each seed's draws are made at once
        where = pick == s
        slots[where] = _item_means(d[:, None], int(where.sum()), rng)[:, 0]
    means = np.array([v.mean() for v in diffs])
    one = diffs[0]
    item_part = (one.var(ddof=1) / len(one), len(one) - 1) if len(diffs) == 1 else (0.0, 0)
    return _Resampled(slots.mean(1), means, item_part, tuple(len(v) for v in diffs))


def _satterthwaite(*parts: tuple[float, int]) -> float:
    """Degrees of freedom of a sum of variance estimates (variance, its degrees of freedom); inf when all are 0."""
    total = sum(v for v, _ in parts)
    denom = sum(v * v / k for v, k in parts if k > 0 and v > 0)
    return total * total / denom if denom > 0 else float("inf")
