"""MINR against MAE over pretraining seeds: for every metric a stage measures per item, each MINR model against
each MAE model at equal steps, and against the MAE run matched to its training FLOPs (the equal-compute arm), as
one seed-level estimate (`probes.stats.seed_level`: seeds and items resampled) with each seed's own difference.
A difference is established only when that interval excludes zero."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cli.bench.runs import Bench, Run, family
from cli.bench.stages import COMPUTE
from probes.stats import SeedLevel, seed_level

SCALE = {"PSNR": (1.0, "dB")}  # everything else is a fraction shown in points


@dataclass(frozen=True)
class SeedComparison:
    metric: str  # "probe linear", "fine-tuning", ...
    arm: str  # "equal steps" or "equal FLOPs"
    result: SeedLevel

    @property
    def unit(self) -> tuple[float, str]:
        return SCALE.get(self.metric.rsplit(" ", 1)[-1], (100.0, "pts"))


def opponents(b: Bench) -> list[tuple[str, str, str, list[tuple[Run, Run]]]]:
    """(MINR model, MAE model, arm, [(MINR run, MAE run) per seed]) for every comparison the bench can draw."""
    runs = b.runs()
    families = {r.model: family(r.model) for r in runs}
    out = []
    for m in b.cfg.models:
        if families[m] != "minr":
            continue
        for o in b.cfg.models:
            if families[o] != "mae":
                continue
            for arm, matched in (("equal steps", None), ("equal FLOPs", m)):
                pairs = [
                    (a, c)
                    for a in runs
                    if a.model == m and a.matched_to is None
                    for c in runs
                    if c.model == o and c.matched_to == matched and c.seed == a.seed
                ]
                if pairs:
                    out.append((m, o, arm, pairs))
    return out


def comparisons(b: Bench) -> list[SeedComparison]:
    """Every seed-level comparison, over the seeds whose per-item outcomes the metric has (segmentation may
    train on fewer pretraining seeds than the other stages)."""
    outcomes = {}
    for stage in COMPUTE:
        outcomes.update(stage.outcomes(b))
    out = []
    for metric, values in outcomes.items():
        for m, o, arm, pairs in opponents(b):
            pairs = [(a, c) for a, c in pairs if a.name in values and c.name in values]
            if not pairs:
                continue
            result = seed_level(
                m,
                [values[a.name] for a, _ in pairs],
                o if arm == "equal steps" else f"{o} (FLOPs of {m})",
                [values[c.name] for _, c in pairs],
                method=metric,
                metric=metric,
            )
            out.append(SeedComparison(metric, arm, result))
        out += _gains(b, metric, values)
    return out


def _gains(b: Bench, metric: str, values: dict[str, np.ndarray]) -> list[SeedComparison]:
    """Each model pretrained against the same architecture from its random initialisation (the from-scratch
    control), over the seeds where both were evaluated."""
    out = []
    for m in b.cfg.models:
        runs = [
            r for r in b.runs() if r.model == m and not r.matched_to and {r.name, f"{r.name}@init"} <= values.keys()
        ]
        if runs:
            result = seed_level(
                m,
                [values[r.name] for r in runs],
                f"{m} from scratch",
                [values[f"{r.name}@init"] for r in runs],
                method=metric,
                metric=metric,
            )
            out.append(SeedComparison(metric, "gain over scratch", result))
    return out


HEADERS = [
    "metric",
    "arm",
    "MINR",
    "MAE",
    "seeds",
    "diff",
    "95% CI (seeds and items)",
    "per seed",
    "agree",
    "established",
]


def rows(found: list[SeedComparison]) -> list[list[str]]:
    table = []
    for c in found:
        r, (scale, unit) = c.result, c.unit
        per = ", ".join(f"{scale * v:+.2f}" for v in r.per_seed)
        table.append(
            [
                c.metric,
                c.arm,
                r.a,
                r.b,
                str(r.seeds),
                f"{scale * r.diff:+.2f} {unit}",
                f"[{scale * r.ci_low:+.2f}, {scale * r.ci_high:+.2f}]",
                per,
                f"{r.agree}/{r.seeds}",
                "yes" if r.established else "no",
            ]
        )
    return table
