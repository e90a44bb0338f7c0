"""The bench's verdict: sentences computed from the gathered numbers, never written by hand.

A difference is called significant when its test's p < 0.05 and its bootstrap interval excludes zero. In the
reconstruction comparisons the masked-only protocol is left out: on the same masks its per-image MINR - MAE difference
equals the pasted one (the two PSNRs differ by the same per-image constant), so it adds no information.
"""

from __future__ import annotations

from typing import Any

from probes.tables import pct

RECON_PROTOCOLS = ("full", "pasted")  # masked-only differences equal pasted ones on the same masks


def significant(p: dict[str, Any]) -> bool:
    return p["p"] is not None and p["p"] < 0.05 and (p["ci_low"] > 0 or p["ci_high"] < 0)


def best_probe_entries(probe: dict[str, Any] | None) -> set[str]:
    """The entry name of each encoder's best feature kind by linear accuracy."""
    best: dict[str, dict[str, Any]] = {}
    for e in (probe or {}).get("entries", []):
        if e.get("linear") and (e["model"] not in best or e["linear"]["mean"] > best[e["model"]]["linear"]["mean"]):
            best[e["model"]] = e
    return {e["name"] for e in best.values()}


HEADLINE_MASK = ("random", 0.75)  # the mask kind and ratio of every headline reconstruction number


def at_headline(recon: dict[str, Any], cell: dict[str, Any]) -> bool:
    """A reconstruction cell of the headline condition: the pretraining dataset (the first evaluated) at 75% random."""
    return (cell["dataset"], cell["kind"], cell["ratio"]) == (recon["config"]["datasets"][0], *HEADLINE_MASK)


def headline_pairs(res: dict[str, Any], models: list[str]) -> list[tuple[str, dict[str, Any], str, float]]:
    """Every headline MINR - MAE comparison as (what, comparison, unit, scale): reconstruction of the bench's own
    models at the headline condition, each encoder's best probe features, fine-tuning, segmentation's token
    backbones. The paired table and the verdict both read this one list."""
    pairs = []
    recon = res["reconstruct"]
    for c in (recon or {}).get("paired", []):
        p = c["comparison"]
        if at_headline(recon, c) and c["protocol"] in RECON_PROTOCOLS and p["a"] in models and p["b"] in models:
            where = f"{c['dataset']}, {c['ratio']:.0%} {c['kind']}"
            pairs.append((f"reconstruction {c['protocol']} PSNR ({where})", p, "dB", 1.0))
    best = best_probe_entries(res["probe"])
    for p in (res["probe"] or {}).get("paired", []):
        if p["a"] in best and p["b"] in best:  # each encoder's best feature; every pair is in probe/main
            pairs.append((f"probe {p['method']} (best features)", p, "pts", 100.0))
    pairs += [("fine-tuning", p, "pts", 100.0) for p in (res["finetune"] or {}).get("paired", [])]
    for regime, r in res["segment"].items():
        for p in (r or {}).get("paired", []):
            if p["a"].endswith(":tokens"):
                pairs.append((f"segmentation {regime} (per-image IoU)", p, "pts", 100.0))
    return pairs


def _diff(p: dict[str, Any], unit: str, scale: float) -> str:
    d, lo, hi = (scale * p[k] for k in ("diff", "ci_low", "ci_high"))
    return f"{d:+.2f} {unit} [{lo:+.2f}, {hi:+.2f}]"


def _compared(p: dict[str, Any], unit: str, scale: float) -> str:
    """'a is better than b (+1.00 pts [+0.50, +1.50])', or 'not significantly different from'."""
    word = ("better than" if p["diff"] > 0 else "worse than") if significant(p) else "not significantly different from"
    return f"{p['a']} is {word} {p['b']} ({_diff(p, unit, scale)})"


def curve_points(curve: dict[str, Any]) -> dict[str, list[tuple[int, float, float]]]:
    """model -> [(step, linear accuracy, k-NN accuracy)] from the learning-curve probe (names model@step:kind)."""
    points: dict[str, list[tuple[int, float, float]]] = {}
    for e in curve["entries"]:
        if "@" not in e["name"]:
            continue
        model, rest = e["name"].split("@", 1)
        points.setdefault(model, []).append((int(rest.split(":")[0]), e["linear"]["mean"], e["knn"]["mean"]))
    return {m: sorted(v) for m, v in points.items()}


def curve_sentences(curve: dict[str, Any]) -> list[str]:
    pixels = next((e for e in curve["entries"] if e["family"] == "pixels"), None)
    out = []
    for model, pts in curve_points(curve).items():
        first, last = pts[0], pts[-1]
        side = "no pixel floor"
        if pixels:
            gap = last[1] - pixels["linear"]["mean"]
            side = f"{abs(100 * gap):.2f} points {'above' if gap > 0 else 'below'} the pixel floor"
        out.append(
            f"Learning curve, {model}: linear {pct(first[1])}% at step {first[0]} (random init) -> "
            f"{pct(last[1])}% at step {last[0]}, {side}."
        )
    return out


def verdict(res: dict[str, Any], models: list[str]) -> list[str]:
    """Sentences computed from the numbers: which differences are significant, whether any encoder beats pixels."""
    pairs = headline_pairs(res, models)
    out = [f"{what[0].upper()}{what[1:]}: {_compared(p, unit, scale)}." for what, p, unit, scale in pairs]
    recon = res["reconstruct"]
    if recon:
        ds = recon["config"]["datasets"][0]
        robust = [v for v in recon["verdicts"] if v["protocol"] == "pasted" and v["dataset"] == ds]
        robust = [v for v in robust if v["minr"] in models]
        less = [v for v in robust if significant(v["comparison"]) and v["comparison"]["diff"] < 0]
        more = [v for v in robust if significant(v["comparison"]) and v["comparison"]["diff"] > 0]
        if robust:
            out.append(
                f"Robustness ({ds}, pasted PSNR, ratio 0.5 -> 0.9 and random -> block): of {len(robust)} paired "
                f"drop comparisons, MINR drops significantly less than MAE in {len(less)}, significantly more in "
                f"{len(more)}, alike in {len(robust) - len(less) - len(more)}."
            )
    probe = res["probe"]
    if probe:
        pixels = next((e for e in probe["entries"] if e["family"] == "pixels"), None)
        encoders = [e for e in probe["entries"] if e["family"] != "pixels" and e.get("linear")]
        if pixels and pixels.get("linear") and encoders:
            best = max(encoders, key=lambda e: e["linear"]["mean"])
            gap = 100 * (best["linear"]["mean"] - pixels["linear"]["mean"])
            side = "above" if gap > 0 else "below"
            out.append(
                f"Frozen features: the best encoder feature ({best['name']}, {pct(best['linear']['mean'])}% linear) "
                f"is {abs(gap):.2f} points {side} the raw-pixel floor ({pct(pixels['linear']['mean'])}%)."
            )
        sig = [p for p in probe["paired"] if significant(p)]
        ahead = [p for p in sig if p["diff"] > 0]
        out.append(
            f"Over every pair of feature kinds, {len(sig)} of {len(probe['paired'])} probe comparisons are "
            f"significant, {len(ahead)} of them in MINR's favour."
        )
    if res["probe_curve"]:
        out += curve_sentences(res["probe_curve"])
    return out
