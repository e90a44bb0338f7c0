"""The seed-level comparison: coverage on synthetic data with known seed and item variance, signs, binary data."""

import numpy as np
import pytest

from probes.stats import _item_means, compare, minr_vs_mae_seeds, paired_bootstrap, pairs_text, seed_level

TRUE = 0.3


def _draw(rng, seeds: int, items: int, *, seed_sd: float, shared_sd: float, noise_sd: float, shared: bool = True):
    """Per-seed a and b on the same items: a - b = TRUE + a seed effect + an item effect (the same image under
    every seed when `shared`) + noise. b itself is arbitrary: only the differences matter."""
    item = rng.normal(0, shared_sd, items)
    a, b = [], []
    for _ in range(seeds):
        own = item if shared else rng.normal(0, shared_sd, items)
        d = TRUE + rng.normal(0, seed_sd) + own + rng.normal(0, noise_sd, items)
        base = rng.normal(0, 1, items)
        a.append(base + d)
        b.append(base)
    return a, b


REGIMES = {  # (seed sd, shared item sd, noise sd) against an item standard error of ~1 / sqrt(200) = 0.07
    "seeds and items": (0.1, 0.5, 0.8),
    "seeds dominate": (0.2, 0.0, 1.0),
    "items only": (0.0, 0.7, 0.7),
}


@pytest.mark.parametrize("regime", REGIMES)
def test_seed_level_interval_covers_the_true_difference_where_an_item_bootstrap_does_not(regime):
    """200 draws of 3-5 seeds x 200 items: the seed-level 95% interval covers the true difference in 90-99% of
    draws; the item bootstrap of the seeds pooled (what one run's interval is) misses it whenever seeds vary."""
    seed_sd, shared_sd, noise_sd = REGIMES[regime]
    rng = np.random.default_rng(1)
    hits = pooled_hits = 0
    for draw in range(200):
        a, b = _draw(rng, 3 + draw % 3, 200, seed_sd=seed_sd, shared_sd=shared_sd, noise_sd=noise_sd)
        r = seed_level("a", a, "b", b, method="m", metric="x", n=400, seed=draw)
        hits += r.ci_low <= TRUE <= r.ci_high
        _, lo, hi = paired_bootstrap(np.concatenate(a), np.concatenate(b), n=400, seed=draw)
        pooled_hits += lo <= TRUE <= hi
    assert 0.90 <= hits / 200 <= 0.995, hits
    if seed_sd > 0:
        assert pooled_hits / 200 < 0.80, pooled_hits


def test_nested_design_covers_when_every_seed_has_its_own_items():
    rng = np.random.default_rng(2)
    hits = 0
    for draw in range(200):
        a, b = _draw(rng, 3 + draw % 3, 200, seed_sd=0.15, shared_sd=0.5, noise_sd=0.8, shared=False)
        r = seed_level("a", a, "b", b, method="m", metric="x", shared_items=False, n=400, seed=draw)
        hits += r.ci_low <= TRUE <= r.ci_high
        assert r.design == "nested" and r.n_items == (200,) * r.seeds
    assert 0.90 <= hits / 200 <= 0.995, hits


def test_sign_agreement_and_established_on_clear_cases():
    rng = np.random.default_rng(3)
    base = [rng.normal(0, 1, 300) for _ in range(4)]
    better = seed_level("a", [x + 1 + rng.normal(0, 0.1, 300) for x in base], "b", base, method="m", metric="x")
    assert better.established and better.agree == 4 and better.ci_low > 0.8
    assert better.diff == pytest.approx(np.mean(better.per_seed)) and len(better.per_seed) == 4

    shifts = [0.5, -0.4, 0.6]  # seeds disagree: every seed's own difference is clear, the method's is not
    mixed = seed_level("a", [x + s for x, s in zip(base, shifts, strict=False)], "b", base[:3], method="m", metric="x")
    assert mixed.per_seed == pytest.approx(shifts) and mixed.agree == 2
    assert not mixed.established and mixed.ci_low < 0 < mixed.ci_high

    worse = seed_level("b", base, "a", [x + 1 for x in base], method="m", metric="x")
    assert worse.established and worse.ci_high < 0 and worse.agree == 4

    same = seed_level("a", base, "a", base, method="m", metric="x")
    assert same.diff == same.ci_low == same.ci_high == 0 and same.agree == 0 and not same.established


def test_one_seed_is_its_item_interval_and_never_established():
    rng = np.random.default_rng(4)
    b = rng.normal(0, 1, 500)
    a = b + 1 + rng.normal(0, 0.5, 500)
    r = seed_level("a", [a], "b", [b], method="m", metric="x")
    _, lo, hi = paired_bootstrap(a, b)
    assert r.seeds == 1 and r.ci_low > 0.9 and not r.established  # clear for this run, silent about the method
    assert r.ci_high - r.ci_low == pytest.approx(hi - lo, rel=0.1)


def test_binary_outcomes():
    """Correct / wrong per image: accuracies 0.90 vs 0.85 under 3 seeds on the same 2,000 images."""
    rng = np.random.default_rng(5)
    a = [rng.random(2000) < 0.90 for _ in range(3)]
    b = [rng.random(2000) < 0.85 for _ in range(3)]
    r = seed_level("a", a, "b", b, method="linear", metric="accuracy")
    want = np.mean([x.mean() - y.mean() for x, y in zip(a, b, strict=True)])
    assert r.diff == pytest.approx(want) and r.established and r.agree == 3 and r.ci_low < want < r.ci_high
    assert r.n_items == (2000,) * 3 and r.metric == "accuracy"


def test_repeated_rows_are_drawn_from_the_same_distribution_as_items():
    """Binary differences take the multinomial shortcut over distinct rows; jittering them to make every row
    distinct forces the item-by-item draw: the resampled means agree in mean and spread."""
    rng = np.random.default_rng(6)
    cols = rng.choice([-1.0, 0.0, 1.0], p=[0.1, 0.75, 0.15], size=(4000, 2))
    fast = _item_means(cols, 3000, np.random.default_rng(0))
    slow = _item_means(cols + rng.normal(0, 1e-9, cols.shape), 3000, np.random.default_rng(0))
    assert fast.shape == slow.shape == (3000, 2)
    assert fast.mean(0) == pytest.approx(cols.mean(0), abs=2e-3)
    assert fast.mean(0) == pytest.approx(slow.mean(0), abs=2e-3)
    assert fast.std(0) == pytest.approx(slow.std(0), rel=0.1)
    assert fast.std(0) == pytest.approx(cols.std(0) / np.sqrt(4000), rel=0.1)


def test_a_paired_comparison_counts_only_defined_pairs():
    """An undefined value (NaN: the masked PSNR of an image with no masked pixel) on either side leaves its pair out
    of the estimate, the test and `n`, and is counted in `excluded`."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 40), rng.normal(0, 1, 40)
    a[:5], b[5:8] = np.nan, np.nan
    p = compare("a", a, "b", b, method="m", metric="psnr")
    whole = compare("a", a[8:], "b", b[8:], method="m", metric="psnr")
    assert (p.n, p.excluded, whole.n, whole.excluded) == (32, 8, 32, 0)
    assert (p.diff, p.p) == (whole.diff, whole.p) and pairs_text(p) == "32 (8 undefined)" and pairs_text(whole) == "32"
    binary = compare("a", a > 1, "b", b > 1, method="m", metric="acc")  # correct / wrong is always defined
    assert (binary.n, binary.excluded) == (40, 0)


def test_mismatched_inputs_are_refused():
    x = np.zeros(10)
    with pytest.raises(ValueError, match="same seeds"):
        seed_level("a", [x, x], "b", [x], method="m", metric="x")
    with pytest.raises(ValueError, match="seed 1"):
        seed_level("a", [x, x], "b", [x, x[:5]], method="m", metric="x")
    with pytest.raises(ValueError, match="same items under every seed"):
        seed_level("a", [x, x[:5]], "b", [x, x[:5]], method="m", metric="x")


def test_every_minr_model_against_every_mae_model_over_seeds():
    rng = np.random.default_rng(7)
    mae = [rng.normal(0, 1, 100) for _ in range(3)]
    ginr = [x + 1 for x in mae]
    entries = [("ginr", "minr", ginr), ("mae", "mae", mae), ("transinr", "minr", [x - 1 for x in mae])]
    rows = minr_vs_mae_seeds(entries, method="linear", metric="psnr")
    assert [(r.a, r.b, r.seeds) for r in rows] == [("ginr", "mae", 3), ("transinr", "mae", 3)]
    assert rows[0].diff == pytest.approx(1) and rows[1].diff == pytest.approx(-1)
    steps = minr_vs_mae_seeds(entries[:2] * 2, method="m", metric="x", groups=[0, 0, 9, 9])
    assert [(r.a, r.b) for r in steps] == [("ginr", "mae")] * 2  # only within a group
