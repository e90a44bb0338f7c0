"""The bench's report: results.json (every number, config, checkpoint hash, git sha, hardware, the time of each
stage), report.md and a self-contained report.html (figures embedded). A headline row per model, the paired
MINR - MAE differences with intervals, a verdict written from the numbers (never by hand), then a section per stage.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from minr.io import atomic_write_bytes, atomic_write_text, git_sha, read_json, write_json
from minr.report import markdown_table, pct, print_table
from minr.runtime import hardware

HEADLINE = [
    "model",
    "params",
    "pretrain img/s",
    "PSNR full",
    "PSNR pasted",
    "PSNR masked",
    "best linear %",
    "best k-NN %",
    "fine-tune %",
    "mIoU frozen",
    "mIoU full",
]


def _load(path: Path) -> dict[str, Any] | None:
    return read_json(path, "a result") if path.is_file() else None


def gather(bench) -> dict[str, Any]:
    """Every stage's results as plain data, with the stages' timings and the checkpoints' hashes."""
    out = bench.out
    res: dict[str, Any] = {"config": read_json(out / "bench.json", "a bench record")["config"], "stages": {}}
    for stage in ("pretrain", "reconstruct", "probe", "finetune", "segment"):
        rec = _load(out / stage / "stage.json")
        res["stages"][stage] = rec and {"seconds": rec["seconds"]}
    res["pretrain"] = {m: _load(bench.run_dir(m) / "summary.json") for m in bench.cfg.models}
    res["checkpoints"] = {m: _sha(c) for m, c in zip(bench.cfg.models, bench.final(), strict=True)}
    res["reconstruct"] = _load(out / "reconstruct" / "results.json")
    res["probe_curve"] = _load(out / "probe" / "curve" / "results.json")
    res["probe"] = _load(out / "probe" / "main" / "results.json")
    res["finetune"] = _load(out / "finetune" / "results.json")
    res["segment"] = {r: _load(out / "segment" / r / "results.json") for r in ("frozen", "full")}
    res["git_sha"], res["hardware"] = git_sha(), hardware()
    return res


def _sha(path: str) -> str | None:
    from minr.checkpoint import stored_weights_sha256

    return stored_weights_sha256(path) if Path(path).is_file() else None


def _params(model: str) -> int:
    import torch

    from minr.models import create_model

    with torch.device("meta"):
        return sum(p.numel() for p in create_model(model).parameters())


def headline_rows(res: dict[str, Any], models: list[str]) -> list[list[str]]:
    rows = []
    for m in models:
        s = res["pretrain"].get(m) or {}
        probe = [e for e in (res["probe"] or {}).get("entries", []) if e["model"] == m]
        best = {k: max((e[k]["mean"] for e in probe if e.get(k)), default=None) for k in ("linear", "knn")}
        ft = next((e for e in (res["finetune"] or {}).get("entries", []) if e["name"] == m), None)
        seg = {
            r: next((e for e in (v or {}).get("entries", []) if e["name"] == f"{m}:tokens"), None)
            for r, v in res["segment"].items()
        }
        rows.append(
            [
                m,
                f"{_params(m):,}",
                f"{s.get('train_images_per_s') or 0:,.0f}",
                *(f"{s[k]:.2f}" if k in s else "" for k in ("psnr_full", "psnr_pasted", "psnr_masked")),
                pct(best["linear"]),
                pct(best["knn"]),
                pct(ft and ft["mean"]),
                pct(seg["frozen"] and seg["frozen"]["mean"]),
                pct(seg["full"] and seg["full"]["mean"]),
            ]
        )
    pixels = next((e for e in (res["probe"] or {}).get("entries", []) if e["family"] == "pixels"), None)
    if pixels:
        rows.append(
            [
                "raw pixels (floor)",
                "",
                "",
                "",
                "",
                "",
                pct(pixels["linear"] and pixels["linear"]["mean"]),
                pct(pixels["knn"] and pixels["knn"]["mean"]),
                "",
                "",
                "",
            ]
        )
    return rows


def paired_rows(res: dict[str, Any]) -> list[list[str]]:
    """Every paired MINR - MAE comparison at the headline conditions, with its interval and p-value."""
    rows = []

    def add(stage: str, p: dict[str, Any], unit: str, scale: float) -> None:
        rows.append(
            [
                stage,
                p["a"],
                p["b"],
                f"{scale * p['diff']:+.2f} {unit}",
                f"[{scale * p['ci_low']:+.2f}, {scale * p['ci_high']:+.2f}]",
                f"{p['p']:.2g} ({p['test']})",
                "yes" if _significant(p) else "no",
            ]
        )

    recon = res["reconstruct"]
    if recon:
        ds = recon["config"]["datasets"][0]
        for c in recon["paired"]:
            if (c["dataset"], c["kind"], c["ratio"]) == (ds, "random", 0.75):
                add(f"reconstruction {c['protocol']} ({ds})", c["comparison"], "dB", 1)
    best = best_probe_entries(res["probe"])
    for p in (res["probe"] or {}).get("paired", []):
        if p["a"] in best and p["b"] in best:  # each encoder's best feature; every pair is in probe/main
            add(f"probe {p['method']} (best features)", p, "pts", 100)
    for p in (res["finetune"] or {}).get("paired", []):
        add("fine-tuning", p, "pts", 100)
    for regime, r in res["segment"].items():
        for p in (r or {}).get("paired", []):
            if p["a"].endswith(":tokens"):
                add(f"segmentation {regime} (per-image IoU)", p, "pts", 100)
    return rows


def best_probe_entries(probe: dict[str, Any] | None) -> set[str]:
    """The entry name of each encoder's best feature kind by linear accuracy."""
    best: dict[str, dict[str, Any]] = {}
    for e in (probe or {}).get("entries", []):
        if e.get("linear") and (e["model"] not in best or e["linear"]["mean"] > best[e["model"]]["linear"]["mean"]):
            best[e["model"]] = e
    return {e["name"] for e in best.values()}


def _significant(p: dict[str, Any]) -> bool:
    return p["p"] is not None and p["p"] < 0.05 and (p["ci_low"] > 0 or p["ci_high"] < 0)


def verdict(res: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers: which differences are significant, whether any encoder beats pixels."""
    out = []
    recon = res["reconstruct"]
    if recon:
        ds = recon["config"]["datasets"][0]
        for c in recon["paired"]:
            if (c["dataset"], c["kind"], c["ratio"]) == (ds, "random", 0.75):
                p = c["comparison"]
                word = ("better" if p["diff"] > 0 else "worse") if _significant(p) else "not significantly different"
                out.append(
                    f"Reconstruction ({ds}, 75% random, {c['protocol']} PSNR): {p['a']} is {word} than {p['b']} "
                    f"({p['diff']:+.2f} dB [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}])."
                )
        robust = [v for v in recon["verdicts"] if v["protocol"] in ("pasted", "masked") and v["dataset"] == ds]
        less = [v for v in robust if _significant(v["comparison"]) and v["comparison"]["diff"] < 0]
        more = [v for v in robust if _significant(v["comparison"]) and v["comparison"]["diff"] > 0]
        if robust:
            out.append(
                f"Robustness ({ds}, pasted and masked PSNR): of {len(robust)} paired drop comparisons, MINR drops "
                f"significantly less in {len(less)}, significantly more in {len(more)}, alike in the rest."
            )
    probe = res["probe"]
    if probe:
        pixels = next((e for e in probe["entries"] if e["family"] == "pixels"), None)
        encoders = [e for e in probe["entries"] if e["family"] != "pixels" and e.get("linear")]
        if pixels and pixels.get("linear") and encoders:
            best = max(encoders, key=lambda e: e["linear"]["mean"])
            gap = best["linear"]["mean"] - pixels["linear"]["mean"]
            beats = "beats" if gap > 0 else "does not beat"
            out.append(
                f"Frozen features: the best encoder feature ({best['name']}, {pct(best['linear']['mean'])}% linear) "
                f"{beats} the raw-pixel floor ({pct(pixels['linear']['mean'])}%) by {100 * gap:+.2f} points."
            )
        sig = [p for p in probe["paired"] if _significant(p)]
        named = ", ".join(f"{p['a']} vs {p['b']} {p['method']} {100 * p['diff']:+.2f} pts" for p in sig[:4])
        total = len(probe["paired"])
        out.append(
            f"Probes: {len(sig)} of {total} paired MINR - MAE comparisons are significant"
            + (f" ({named})." if sig else ".")
        )
    for name, r in (("Fine-tuning", res["finetune"]), *((f"Segmentation ({k})", v) for k, v in res["segment"].items())):
        if r and r["paired"]:
            sig = [p for p in r["paired"] if _significant(p)]
            out.append(f"{name}: {len(sig)} of {len(r['paired'])} paired MINR - MAE differences are significant.")
    curve = res["probe_curve"]
    if curve:
        out += curve_sentences(curve)
    return out


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
        above = pixels and last[1] > pixels["linear"]["mean"]
        out.append(
            f"Learning curve, {model}: linear {pct(first[1])}% at step {first[0]} (random init) -> "
            f"{pct(last[1])}% at step {last[0]}; {'above' if above else 'below'} the pixel floor at the end."
        )
    return out


def plot_curves(res: dict[str, Any], batch: int, path: Path) -> Path | None:
    curve = res["probe_curve"]
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    pixels = next((e for e in curve["entries"] if e["family"] == "pixels"), None)
    for ax, (i, method) in zip(axes, enumerate(("linear", "knn")), strict=True):
        for model, pts in curve_points(curve).items():
            line = ax.plot([s * batch for s, *_ in pts], [p[1 + i] for p in pts], marker="o", label=model)
            ax.scatter([0], [pts[0][1 + i]], marker="x", s=60, color=line[0].get_color())
        if pixels:
            ax.axhline(pixels[method]["mean"], color="grey", linestyle="--", label="raw pixels (floor)")
        ax.set_xlabel("images seen in pretraining (x at 0: the randomly initialised encoder)")
        ax.set_ylabel(f"{'linear probe' if method == 'linear' else 'k-NN'} test accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Does pretraining help yet? Frozen-feature accuracy against images seen", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


FIGURES = [
    ("Learning curves", "learning_curves.png"),
    ("Test-time masking (best feature per encoder)", "probe/main/mask_sweep.png"),
    ("Reconstructions (75% random masking)", "reconstruct/grid_*.png"),
    ("PSNR against the mask ratio", "reconstruct/psnr_vs_ratio_*_random.png"),
    ("Transfer matrix", "reconstruct/transfer_matrix.png"),
    ("Segmentation, frozen backbones", "segment/frozen/predictions.png"),
    ("Segmentation, fine-tuned backbones", "segment/full/predictions.png"),
]


def sections(res: dict[str, Any], bench) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) of the per-stage tables."""
    out = []
    if res["reconstruct"]:
        from minr.recon import analysis
        from minr.recon.evaluate import Cell, ReconConfig, ReconEntry

        r = res["reconstruct"]
        cfg = ReconConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in r["config"].items()})
        entries = [ReconEntry(**{**e, "cells": [Cell(**c) for c in e["cells"]]}) for e in r["entries"]]
        for ds in cfg.datasets:
            out.append(
                (
                    f"Reconstruction, {ds} (75% random; mean [95% CI] dB)",
                    ["entry", "pretrained on", "full", "pasted", "masked"],
                    analysis.headline(entries, cfg, ds),
                )
            )
    if res["probe"]:
        from probes.report import ENTRY_HEADERS

        rows = [
            [e["name"], str(e["feature_dim"]), _acc(e.get("linear")), _acc(e.get("knn"))]
            for e in res["probe"]["entries"]
        ]
        out.append(("Frozen-feature probes", list(ENTRY_HEADERS), rows))
    if res["finetune"]:
        rows = [[e["name"], f"{pct(e['mean'])} ± {pct(e['std'])}"] for e in res["finetune"]["entries"]]
        out.append(("Fine-tuning (test accuracy %)", ["model", "accuracy"], rows))
    for regime, r in res["segment"].items():
        if r:
            rows = [[e["name"], pct(e["mean"]), pct(e["mAcc"]), pct(e["aAcc"])] for e in r["entries"]]
            out.append((f"Segmentation, {regime} backbone", ["model:feature", "mIoU", "mAcc", "aAcc"], rows))
    return out


def _acc(s: dict[str, Any] | None) -> str:
    if not s:
        return ""
    return f"{pct(s['mean'])} ± {pct(s['std'])}" if s.get("per_seed") else pct(s["mean"])


def _figures(out: Path) -> list[tuple[str, Path]]:
    found = []
    for title, pattern in FIGURES:
        for p in sorted(out.glob(pattern)):
            found.append((title, p))
    return found


def write_report(bench) -> None:
    out, cfg = bench.out, bench.cfg
    res = gather(bench)
    plot_curves(res, cfg.pretrain.batch_size or 1, out / "learning_curves.png")
    head, paired, says = headline_rows(res, list(cfg.models)), paired_rows(res), verdict(res)
    per_stage, figures = sections(res, bench), _figures(out)
    timing = ", ".join(f"{s} {v['seconds'] / 60:.1f} min" for s, v in res["stages"].items() if v)
    md = [
        f"# minr bench: {cfg.name}\n",
        f"{cfg.description}\n",
        f"Stages: {timing}. Code: {res['git_sha']}; "
        f"{res['hardware']['cpu']} ({res['hardware']['cpu_count']} cores); torch {res['hardware']['torch']}.\n",
        "## Headline\n",
        markdown_table(HEADLINE, head),
        "## Paired MINR - MAE\n",
        markdown_table(["comparison", "MINR", "MAE", "diff", "95% CI", "p (test)", "significant"], paired),
        "## Verdict (computed from the numbers above)\n",
        " ".join(says) + "\n",
    ]
    for title, headers, rows in per_stage:
        md += [f"## {title}\n", markdown_table(headers, rows)]
    md += [f"## {title}\n\n![{title}]({p.relative_to(out)})\n" for title, p in figures]
    atomic_write_text(out / "report.md", "\n".join(md))
    atomic_write_text(out / "report.html", to_html(cfg, res, head, paired, says, per_stage, figures, timing))
    write_json(
        out / "results.json", {**res, "headline": [dict(zip(HEADLINE, r, strict=True)) for r in head], "verdict": says}
    )
    print_table(HEADLINE, head, title=f"minr bench {cfg.name}")


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def to_html(cfg, res, head, paired, says, per_stage, figures, timing) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#f3f3f3}"
        "img{max-width:100%;border:1px solid #eee}"
    )
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>minr bench {html.escape(cfg.name)}</title>"
        f"<style>{style}</style></head><body>",
        f"<h1>minr bench: {html.escape(cfg.name)}</h1>",
        f"<p>{html.escape(cfg.description)}</p><p>Stages: {html.escape(timing)}. Code {html.escape(res['git_sha'])}; "
        f"{html.escape(str(res['hardware']['cpu']))}.</p>",
        "<section id='headline'><h2>Headline</h2>",
        _html_table(HEADLINE, head),
        "</section>",
        "<section id='paired'><h2>Paired MINR - MAE</h2>",
        _html_table(["comparison", "MINR", "MAE", "diff", "95% CI", "p (test)", "significant"], paired),
        "</section>",
        "<section id='verdict'><h2>Verdict (computed from the numbers)</h2>",
        "".join(f"<p>{html.escape(s)}</p>" for s in says),
        "</section>",
    ]
    for title, headers, rows in per_stage:
        parts += [f"<section><h2>{html.escape(title)}</h2>", _html_table(headers, rows), "</section>"]
    for title, p in figures:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(
            f"<section><h2>{html.escape(title)}</h2>"
            f"<img alt='{html.escape(p.name)}' src='data:image/png;base64,{data}'></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
