"""The bench's verdict: sentences computed from the stages' typed results, never written by hand.

A difference is called significant when its test's p < 0.05 and its bootstrap interval excludes zero
(`Paired.significant`). In the reconstruction comparisons the masked-only protocol is left out: on the same masks its
per-image MINR - MAE difference equals the pasted one (the two PSNRs differ by the same per-image constant), so it
adds no information. Each encoder's probe features are the kind chosen on validation (`probes.results.best_entries`),
the same in the headline, the paired table and here.
"""

from __future__ import annotations

from dataclasses import dataclass

from cli.bench.results import BenchResults
from probes.stats import Paired
from probes.tables import pct

RECON_PROTOCOLS = ("full", "pasted")  # masked-only differences equal pasted ones on the same masks


@dataclass(frozen=True)
class Comparison:
    """One headline MINR - MAE comparison: what it compares, the paired result, its unit and display scale."""

    what: str
    paired: Paired
    unit: str
    scale: float


def headline_mask(recon) -> tuple[str, float]:
    """The mask kind and ratio of every headline reconstruction number: the condition the reconstruct stage chose
    for its own headline (75% random, or the nearest it measured), read from the stage's config."""
    from probes.recon.analysis import condition_of

    return condition_of(recon.config["mask_kinds"], recon.config["mask_ratios"])


def at_headline(recon, cell) -> bool:
    """A reconstruction cell of the headline condition, on the pretraining dataset (the first evaluated)."""
    return (cell.dataset, cell.kind, cell.ratio) == (recon.config["datasets"][0], *headline_mask(recon))


def chosen_entries(probe) -> dict[str, object]:
    """checkpoint name (a bench run: `ginr_tiny`, `ginr_tiny-seed1`, `ginr_tiny@init`) -> its probe entry of the
    kind chosen on validation."""
    if probe is None:
        return {}
    by_name = {e.name: e for e in probe.entries}
    return {name.rsplit(":", 1)[0]: by_name[name] for name in probe.best.values()}


def headline_pairs(res: BenchResults) -> list[Comparison]:
    """Every headline MINR - MAE comparison: reconstruction of the bench's own models at the headline condition,
    each encoder's chosen probe features, fine-tuning, segmentation (every MINR feature against MAE's tokens, and
    every encoder against the same head on pixels). The paired table and the
    verdict both read this one list."""
    models = set(res.config.models)
    pairs = []
    recon = res.reconstruct
    for c in recon.paired if recon else []:
        p = c.comparison
        if at_headline(recon, c) and c.protocol in RECON_PROTOCOLS and p.a in models and p.b in models:
            where = f"{c.dataset}, {c.ratio:.0%} {c.kind}"
            pairs.append(Comparison(f"reconstruction {c.protocol} PSNR ({where})", p, "dB", 1.0))
    probe = res.probe.main
    best = set(probe.best.values()) if probe else set()
    for p in probe.paired if probe else []:
        if p.a in best and p.b in best:  # each encoder's chosen feature; every pair is in probe/main
            init = ", random init" if "@init" in p.a else ""
            pairs.append(Comparison(f"probe {p.method} (features chosen on val{init})", p, "pts", 100.0))
    pairs += [Comparison("fine-tuning", p, "pts", 100.0) for p in (res.finetune.paired if res.finetune else [])]
    for regime, r in res.segment.items():
        for p in r.paired if r else []:  # every MINR feature against MAE's tokens
            feature = p.a.partition(":")[2]
            pairs.append(Comparison(f"segmentation {regime}, {feature} (per-image IoU)", p, "pts", 100.0))
        for p in r.vs_floor if r else []:
            pairs.append(Comparison(f"segmentation {regime}, against the pixel floor (per-image IoU)", p, "pts", 100.0))
    return pairs


def diff_text(c: Comparison) -> str:
    d, lo, hi = (c.scale * v for v in (c.paired.diff, c.paired.ci_low, c.paired.ci_high))
    return f"{d:+.2f} {c.unit} [{lo:+.2f}, {hi:+.2f}]"


def _compared(c: Comparison) -> str:
    """'a is better than b (+1.00 pts [+0.50, +1.50])', or 'not significantly different from'."""
    p = c.paired
    word = ("better than" if p.diff > 0 else "worse than") if p.significant else "not significantly different from"
    return f"{p.a} is {word} {p.b} ({diff_text(c)})"


def curve_points(curve) -> dict[str, list[tuple[int, float, float]]]:
    """model -> [(step, linear accuracy, k-NN accuracy)] from the learning-curve probe (names model@step:kind)."""
    points: dict[str, list[tuple[int, float, float]]] = {}
    for e in curve.entries:
        if "@" not in e.name:
            continue
        model, rest = e.name.split("@", 1)
        points.setdefault(model, []).append((int(rest.split(":")[0]), e.linear.mean, e.knn.mean))
    return {m: sorted(v) for m, v in points.items()}


def pixels_entry(probe):
    """The raw-pixel floor's entry: its kind chosen on validation, like every encoder's."""
    if not probe:
        return None
    pixels = [e for e in probe.entries if e.family == "pixels"]
    chosen = [e for e in pixels if e.name in probe.best.values()]
    return (chosen or pixels or [None])[0]


def crossing(pts: list[tuple[int, float]], floor: float | None, batch: int, method: str, model: str) -> str:
    """Where a learning curve [(step, accuracy)] first reaches the raw-pixel floor, or that it does not; and how
    much it changed over its last stretch (is it still rising?)."""
    (s0, a0), (s1, a1) = pts[0], pts[-1]
    head = f"Learning curve, {model}, {method}: {pct(a0)}% at step {s0} (random init) -> {pct(a1)}% at step {s1}"
    if floor is None:
        return f"{head}; no pixel floor was probed."
    above = next(((s, a) for s, a in pts[1:] if a >= floor), None)  # trained points only
    if above:
        s, a = above
        where = (
            f"reaches the pixel floor ({pct(floor)}%) at step {s} ({s * batch:,} images seen; {pct(a)}%), "
            f"{100 * (a1 - floor):+.2f} points against it at the end"
        )
    else:
        best_s, best = max(pts[1:] or pts, key=lambda p: p[1])
        where = (
            f"does not reach the pixel floor ({pct(floor)}%) within {s1} steps ({s1 * batch:,} images): best "
            f"{pct(best)}% at step {best_s}, {100 * (floor - best):.2f} points below"
        )
    trend = ""
    if len(pts) > 2:
        (sp, ap) = pts[-2]
        trend = f"; {100 * (a1 - ap):+.2f} points over its last stretch (since step {sp})"
    return f"{head}; {where}{trend}."


def curve_sentences(curve, batch: int) -> list[str]:
    """Per model and method (linear, k-NN): where its learning curve meets the raw-pixel floor of the same
    probe (the same train and test images)."""
    pixels = pixels_entry(curve)
    out = []
    for model, pts in curve_points(curve).items():
        for i, method in enumerate(("linear", "k-NN")):
            floor = pixels and (pixels.linear if i == 0 else pixels.knn)
            out.append(crossing([(p[0], p[1 + i]) for p in pts], floor.mean if floor else None, batch, method, model))
    return out


def _robustness(res: BenchResults) -> list[str]:
    recon = res.reconstruct
    if not recon:
        return []
    ds = recon.config["datasets"][0]
    robust = [v for v in recon.verdicts if v.protocol == "pasted" and v.dataset == ds and v.minr in res.config.models]
    if not robust:
        return []
    less = [v for v in robust if v.comparison.significant and v.comparison.diff < 0]
    more = [v for v in robust if v.comparison.significant and v.comparison.diff > 0]
    return [
        f"Robustness ({ds}, pasted PSNR, ratio 0.5 -> 0.9 and random -> block): of {len(robust)} paired "
        f"drop comparisons, MINR drops significantly less than MAE in {len(less)}, significantly more in "
        f"{len(more)}, alike in {len(robust) - len(less) - len(more)}."
    ]


def _probe_sentences(probe) -> list[str]:
    if not probe:
        return []
    out = []
    pixels = pixels_entry(probe)
    trained = {n: e for n, e in chosen_entries(probe).items() if "@" not in n}  # not the random initialisations
    chosen = [e for e in trained.values() if e.family != "pixels" and e.linear]
    if pixels and pixels.linear and chosen:
        best = max(chosen, key=lambda e: e.linear.val)  # the best encoder by validation accuracy too
        gap = 100 * (best.linear.mean - pixels.linear.mean)
        out.append(
            f"Frozen features: the best encoder feature chosen on validation ({best.name}, "
            f"{pct(best.linear.mean)}% linear on test) is {abs(gap):.2f} points {'above' if gap > 0 else 'below'} "
            f"the raw-pixel floor ({pct(pixels.linear.mean)}%)."
        )
    sig = [p for p in probe.paired if p.significant]
    ahead = [p for p in sig if p.diff > 0]
    out.append(
        f"Over every pair of feature kinds, {len(sig)} of {len(probe.paired)} probe comparisons are "
        f"significant, {len(ahead)} of them in MINR's favour."
    )
    return out


def seed_sentences(res: BenchResults) -> list[str]:
    """One sentence per seed-level comparison: established only when its interval (seeds and items) excludes 0."""
    out = []
    for c in res.seed_level:
        r, (scale, unit) = c.result, c.unit
        word = ("better than" if r.diff > 0 else "worse than") if r.established else "not established against"
        out.append(
            f"Over {r.seeds} pretraining seed(s), {c.metric} at {c.arm}: {r.a} is {word} {r.b} "
            f"({scale * r.diff:+.2f} {unit} [{scale * r.ci_low:+.2f}, {scale * r.ci_high:+.2f}]; "
            f"{r.agree} of {r.seeds} seeds agree in sign)."
        )
    return out


def verdict(res: BenchResults) -> list[str]:
    """Sentences computed from the numbers: the seed-level comparisons first (what decides), then which per-run
    differences are significant, whether any encoder beats pixels."""
    out = seed_sentences(res)
    out += [f"{c.what[0].upper()}{c.what[1:]}: {_compared(c)}." for c in headline_pairs(res)]
    out += _robustness(res)
    out += _probe_sentences(res.probe.main)
    if res.probe.curve:
        out += curve_sentences(res.probe.curve, res.config.pretrain.batch_size)
    return out
