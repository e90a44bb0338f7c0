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

from cli.bench.verdict import at_headline, curve_points, headline_pairs, significant, verdict
from minr.io import atomic_write_bytes, atomic_write_text, git_sha, read_json, write_json
from minr.runtime import hardware
from probes.tables import markdown_table, pct, print_table

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

HEADLINE_NOTE = (
    "PSNR (dB): the test split of the pretraining dataset at 75% random masking (the reconstruct stage; pretraining's "
    "validation when that stage did not run). Linear and k-NN: each encoder's best feature kind. Fine-tuning: "
    "test accuracy. mIoU: mmseg's mIoU on the validation scenes, token backbone (paired tests use per-image IoU)."
)


def _load(path: Path) -> dict[str, Any] | None:
    return read_json(path, "a result") if path.is_file() else None


def gather(bench) -> dict[str, Any]:
    """Every stage's results as plain data, with the stages' timings and the checkpoints' hashes."""
    out = bench.out
    res: dict[str, Any] = {"config": read_json(out / "bench.json", "a bench record")["config"], "stages": {}}
    for stage in ("pretrain", "reconstruct", "probe", "finetune", "segment"):
        rec = _load(out / stage / "stage.json")
        res["stages"][stage] = rec and {"seconds": rec["seconds"], "continued": rec.get("continued", False)}
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
                *(f"{v:.2f}" if v is not None else "" for v in _psnr(res, m, s)),
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


def _psnr(res: dict[str, Any], model: str, summary: dict[str, Any]) -> list[float | None]:
    """Full, pasted and masked PSNR: the reconstruct stage's test split at 75% random masking on the pretraining
    dataset, or pretraining's own validation when that stage did not run."""
    recon = res["reconstruct"]
    entry = next((e for e in (recon or {}).get("entries", []) if e["name"] == model), None)
    if entry is None:
        return [summary.get(f"psnr_{p}") for p in ("full", "pasted", "masked")]
    cells = {c["protocol"]: c["mean"] for c in entry["cells"] if at_headline(recon, c)}
    return [cells.get(p) for p in ("full", "pasted", "masked")]


def paired_rows(res: dict[str, Any], models: list[str]) -> list[list[str]]:
    """Every paired MINR - MAE comparison at the headline conditions, with its interval and p-value."""
    return [
        [
            what,
            p["a"],
            p["b"],
            f"{scale * p['diff']:+.2f} {unit}",
            f"[{scale * p['ci_low']:+.2f}, {scale * p['ci_high']:+.2f}]",
            f"{p['p']:.2g} ({p['test']})",
            "yes" if significant(p) else "no",
        ]
        for what, p, unit, scale in headline_pairs(res, models)
    ]


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
        ax.scatter([], [], marker="x", color="black", label="randomly initialised encoder")
        if pixels:
            ax.axhline(pixels[method]["mean"], color="grey", linestyle="--", label="raw pixels (floor)")
        ax.set_xlabel("images seen in pretraining")
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
        from probes.recon import analysis
        from probes.recon.evaluate import Cell, ReconConfig, ReconEntry

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


def budget(cfg) -> str:
    """The resolved pretraining budget, which `--set` may have changed from the preset's description."""
    p = cfg.pretrain
    extra = f"; extra runs: {', '.join(e.name for e in p.extra)}" if p.extra else ""
    return (
        f"This run: {', '.join(cfg.models)} pretrained on {p.dataset} for {p.steps} steps of batch {p.batch_size} "
        f"({p.steps * p.batch_size:,} images), seed {p.seed}{extra}."
    )


def write_report(bench) -> None:
    out, cfg = bench.out, bench.cfg
    res = gather(bench)
    plot_curves(res, cfg.pretrain.batch_size or 1, out / "learning_curves.png")
    head, paired, says = (
        headline_rows(res, list(cfg.models)),
        paired_rows(res, list(cfg.models)),
        verdict(res, list(cfg.models)),
    )
    per_stage, figures = sections(res, bench), _figures(out)
    timing = ", ".join(
        f"{s} {v['seconds'] / 60:.1f} min" + (" (continued: this session's part)" if v["continued"] else "")
        for s, v in res["stages"].items()
        if v
    )
    md = [
        f"# minr bench: {cfg.name}\n",
        f"{cfg.description}\n",
        f"{budget(cfg)}\n",
        f"Stages: {timing}. Code: {res['git_sha']}; "
        f"{res['hardware']['cpu']} ({res['hardware']['cpu_count']} cores); torch {res['hardware']['torch']}.\n",
        "## Headline\n",
        markdown_table(HEADLINE, head),
        f"{HEADLINE_NOTE}\n",
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
        f"<p>{html.escape(cfg.description)}</p><p>{html.escape(budget(cfg))}</p>",
        f"<p>Stages: {html.escape(timing)}. Code {html.escape(res['git_sha'])}; "
        f"{html.escape(str(res['hardware']['cpu']))}.</p>",
        "<section id='headline'><h2>Headline</h2>",
        _html_table(HEADLINE, head),
        f"<p>{html.escape(HEADLINE_NOTE)}</p></section>",
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
