"""The bench's report: results.json (every number, config, checkpoint hash, git sha, hardware, the time of each
stage), report.md and a self-contained report.html (figures embedded). A headline row per model, the paired
MINR - MAE differences with intervals, a verdict written from the numbers (never by hand), then a section per stage.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from dataclasses import dataclass
from pathlib import Path

from cli.bench import seeds
from cli.bench.results import BenchResults, gather
from cli.bench.runs import Bench, Run
from cli.bench.stage import Stage
from cli.bench.stages import COMPUTE, PretrainRun, selected, stage_key
from cli.bench.verdict import (
    at_headline,
    chosen_entries,
    curve_points,
    headline_mask,
    headline_pairs,
    pixels_entry,
    verdict,
)
from minr.io import atomic_write_bytes, atomic_write_text, git_sha, write_json
from probes.stats import pairs_text
from probes.tables import markdown_table, over_seeds, pct, print_table

HEADLINE = [
    "model",
    "params",
    "pretrain steps",
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
    "PSNR (dB): the test split of the pretraining dataset at {condition} (the reconstruct stage; pretraining's "
    "validation when that stage did not run). Linear and k-NN: each encoder's feature kind chosen on validation. "
    "Fine-tuning: "
    "test accuracy. mIoU: mmseg's mIoU on the validation scenes, token backbone (paired tests use per-image IoU); "
    "the floor's: the same head on the image itself."
)


def condition(res: BenchResults) -> str:
    """The headline reconstruction condition in words ("75% random masking"), as the reconstruct stage measured it;
    the paper's when that stage did not run (pretraining's validation then uses the run's own mask)."""
    from probes.recon.analysis import HEADLINE, condition_words

    return condition_words(*(headline_mask(res.reconstruct) if res.reconstruct else HEADLINE))


def _params(model: str) -> int:
    from minr.models import get_spec

    return get_spec(model).params


def headline_runs(res: BenchResults) -> list[tuple[str, Run]]:
    """(label, run) of the first pretraining seed: each model, then each equal-FLOPs run ("mae_tiny (FLOPs of
    ginr_tiny)")."""
    first = [r for r in res.runs if r.seed == res.config.pretrain.seed]
    return [(r.name if r.matched_to is None else f"{r.model} (FLOPs of {r.matched_to})", r) for r in first]


def headline_rows(res: BenchResults) -> list[list[str]]:
    rows = []
    chosen = chosen_entries(res.probe.main)
    for label, spec in headline_runs(res):
        m = spec.name
        run = res.pretrain.get(m)
        probe = chosen.get(m)
        ft = next((e for e in (res.finetune.entries if res.finetune else []) if e.name == m), None)
        seg = {
            regime: next((e for e in (r.entries if r else []) if e.name == f"{m}:tokens"), None)
            for regime, r in res.segment.items()
        }
        rows.append(
            [
                label,
                f"{_params(spec.model):,}",
                f"{spec.steps:,}",
                f"{(run.train_images_per_s if run else None) or 0:,.0f}",
                *(f"{v:.2f}" if v is not None else "" for v in _psnr(res, m, run)),
                pct(probe and probe.linear and probe.linear.mean),
                pct(probe and probe.knn and probe.knn.mean),
                pct(ft and ft.mean),
                pct(seg["frozen"] and seg["frozen"].mean),
                pct(seg["full"] and seg["full"].mean),
            ]
        )
    pixels = pixels_entry(res.probe.main)
    seg_floor = [pct(r and r.floor and r.floor.mean) for r in (res.segment.get("frozen"), res.segment.get("full"))]
    if pixels or any(seg_floor):
        floor = [pct(pixels and pixels.linear and pixels.linear.mean), pct(pixels and pixels.knn and pixels.knn.mean)]
        rows.append(["raw pixels (floor)", "", "", "", "", "", "", *floor, "", *seg_floor])
    return rows


def _psnr(res: BenchResults, model: str, run: PretrainRun | None) -> list[float | None]:
    """Full, pasted and masked PSNR: the reconstruct stage's test split at the headline condition on the pretraining
    dataset, or pretraining's own validation when that stage did not run."""
    recon = res.reconstruct
    entry = next((e for e in (recon.entries if recon else []) if e.name == model), None)
    if entry is None:
        return [getattr(run, f"psnr_{p}") if run else None for p in ("full", "pasted", "masked")]
    cells = {c.protocol: c.mean for c in entry.cells if at_headline(recon, c)}
    return [cells.get(p) for p in ("full", "pasted", "masked")]


def paired_rows(res: BenchResults) -> list[list[str]]:
    """Every paired MINR - MAE comparison at the headline conditions, with its interval and p-value."""
    rows = []
    for c in headline_pairs(res):
        p = c.paired
        d, lo, hi = (c.scale * v for v in (p.diff, p.ci_low, p.ci_high))
        test = f"{p.p:.2g} ({p.test})" if p.p is not None else f"- ({p.test})"
        row = [c.what, p.a, p.b, f"{d:+.2f} {c.unit}", f"[{lo:+.2f}, {hi:+.2f}]", test, _yes(p.significant)]
        rows.append([*row, pairs_text(p)])
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def plot_curves(res: BenchResults, batch: int, path: Path) -> Path | None:
    curve = res.probe.curve
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    pixels = pixels_entry(curve)
    for ax, (i, method) in zip(axes, enumerate(("linear", "knn")), strict=True):
        for model, pts in curve_points(curve).items():
            line = ax.plot([s * batch for s, *_ in pts], [p[1 + i] for p in pts], marker="o", label=model)
            ax.scatter([0], [pts[0][1 + i]], marker="x", s=60, color=line[0].get_color())
        ax.scatter([], [], marker="x", color="black", label="randomly initialised encoder")
        if pixels:
            ax.axhline(getattr(pixels, method).mean, color="grey", linestyle="--", label="raw pixels (floor)")
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
    ("Test-time masking (feature chosen per encoder)", "probe/main/mask_sweep.png"),
    ("Reconstructions ({condition})", "reconstruct/grid_*.png"),
    ("PSNR against the mask ratio", "reconstruct/psnr_vs_ratio_*_random.png"),
    ("Transfer matrix", "reconstruct/transfer_matrix.png"),
    ("Segmentation, frozen backbones", "segment/frozen/predictions.png"),
    ("Segmentation, fine-tuned backbones", "segment/full/predictions.png"),
]

Table = tuple[str, list[str], list[list[str]]]  # (title, headers, rows)


def sections(res: BenchResults, recon_cfg) -> list[Table]:
    """The per-stage tables."""
    out: list[Table] = []
    if res.reconstruct:
        from probes.recon import analysis

        for ds in recon_cfg.datasets:
            out.append(
                (
                    f"Reconstruction, {ds} ({analysis.condition_title(recon_cfg)}; mean [95% CI] dB)",
                    ["entry", "pretrained on", "full", "pasted", "masked"],
                    analysis.headline(res.reconstruct.entries, recon_cfg, ds),
                )
            )
    if res.probe.main:
        from probes.report import ENTRY_HEADERS, entry_rows

        main = res.probe.main
        out.append(("Frozen-feature probes", list(ENTRY_HEADERS), entry_rows(main.entries, main.best)))
    if res.finetune:
        rows = [[e.name, _over_seeds(e.mean, e.std, e.per_seed)] for e in res.finetune.entries]
        out.append(("Fine-tuning (test accuracy %)", ["model", "accuracy"], rows))
    for regime, r in res.segment.items():
        if r:
            from finetune.seg_report import per_class_table

            rows = [
                [e.name + (" (floor)" if e.is_floor else ""), _over_seeds(e.mean, e.std, e.per_seed), pct(e.mAcc)]
                + [pct(e.aAcc), "" if not r.floor or e.is_floor else f"{100 * (e.mean - r.floor.mean):+.2f}"]
                for e in r.entries
            ]
            head = ["model:feature", "mIoU", "mAcc", "aAcc", "vs pixels (pts)"]
            out.append((f"Segmentation, {regime} backbone ({_seg_note(r)})", head, rows))
            out.append((f"Segmentation, {regime} backbone: IoU per class", *per_class_table(r)))
    return out


def _seg_note(r) -> str:
    fit = {e.inr_fit_steps for e in r.entries if e.inr_layers}
    steps = r.config.get("max_steps")
    return f"{steps} steps" + (f"; INR features fitted {fit.pop()} steps per window" if len(fit) == 1 else "")


def _over_seeds(mean: float, std: float, per_seed: list[float]) -> str:
    return over_seeds(mean, std, len(per_seed))


def _figures(out: Path, condition: str) -> list[tuple[str, Path]]:
    return [(title.format(condition=condition), p) for title, pattern in FIGURES for p in sorted(out.glob(pattern))]


def budget(cfg) -> str:
    """The resolved pretraining budget, which `--set` may have changed from the preset's description."""
    p = cfg.pretrain
    extra = f"; extra runs: {', '.join(e.name for e in p.extra)}" if p.extra else ""
    seeds = f"seed {p.seed}" if p.seeds == 1 else f"seeds {p.seed}-{p.seed + p.seeds - 1}"
    arm = "also MAE for each MINR's training FLOPs" if p.equal_flops else "no equal-FLOPs arm"
    return (
        f"This run: {', '.join(cfg.models)} pretrained on {p.dataset} for {p.steps:,} steps of batch {p.batch_size} "
        f"({p.steps * p.batch_size:,} images), {seeds}, {arm}{extra}."
    )


@dataclass(frozen=True)
class Rendered:
    """Everything the report shows, computed once for Markdown, HTML, JSON and the terminal."""

    head: list[list[str]]
    paired: list[list[str]]
    seed_level: list[list[str]]  # the answer over pretraining seeds, shown before each seed's own pairs
    says: list[str]
    per_stage: list[Table]
    figures: list[tuple[str, Path]]
    timing: str
    machine: str
    note: str  # what the headline numbers are


SEEDS_TITLE = "MINR - MAE over pretraining seeds"
PAIRED_HEADERS = ["comparison", "MINR", "MAE", "diff", "95% CI", "p (test)", "significant", "items"]


def render(b: Bench, res: BenchResults) -> Rendered:
    from cli.bench.stages import Reconstruct

    timing = ", ".join(
        f"{s} {v.seconds / 60:.1f} min" + (" (continued: this session's part)" if v.continued else "")
        for s, v in res.stages.items()
        if v
    )
    hw = res.hardware
    return Rendered(
        head=headline_rows(res),
        paired=paired_rows(res),
        seed_level=seeds.rows(res.seed_level),
        says=verdict(res),
        per_stage=sections(res, Reconstruct().configs(b) if res.reconstruct else None),
        figures=_figures(b.out, condition(res)),
        timing=timing,
        machine=f"Code: {code_line(res)}. Machine: {hw['cpu']} ({hw['cpu_count']} cores); torch {hw['torch']}.",
        note=HEADLINE_NOTE.format(condition=condition(res)),
    )


def code_line(res: BenchResults) -> str:
    """The commit each stage ran and the report's: one SHA when they agree."""
    by_sha: dict[str, list[str]] = {}
    for name, t in res.stages.items():
        if t:
            by_sha.setdefault(t.git_sha or "not recorded (run before stages kept it)", []).append(name)
    if set(by_sha) <= {res.git_sha}:
        return res.git_sha
    parts = [f"{', '.join(names)}: {sha}" for sha, names in by_sha.items()]
    return "; ".join([*parts, f"report: {res.git_sha}"])


def markdown(cfg, r: Rendered, out: Path) -> str:
    md = [
        f"# minr bench: {cfg.name}\n",
        f"{cfg.description}\n",
        f"{budget(cfg)}\n",
        f"Stages: {r.timing}. {r.machine}\n",
        "## Headline\n",
        markdown_table(HEADLINE, r.head),
        f"{r.note}\n",
        *([f"## {SEEDS_TITLE}\n", markdown_table(seeds.HEADERS, r.seed_level)] if r.seed_level else []),
        "## Paired MINR - MAE\n",
        markdown_table(PAIRED_HEADERS, r.paired),
        "## Verdict (computed from the numbers above)\n",
        "".join(f"- {line}\n" for line in r.says),
    ]
    for title, headers, rows in r.per_stage:
        md += [f"## {title}\n", markdown_table(headers, rows)]
    md += [f"## {title}\n\n![{title}]({p.relative_to(out)})\n" for title, p in r.figures]
    return "\n".join(md)


def write_report(b: Bench, res: BenchResults) -> None:
    from minr.errors import MinrError

    if not res.has_any():
        raise MinrError(f"{b.out} holds no finished stage to report on; run the other stages first (drop --stages)")
    cfg = b.cfg
    plot_curves(res, cfg.pretrain.batch_size, b.out / "learning_curves.png")
    r = render(b, res)
    atomic_write_text(b.out / "report.md", markdown(cfg, r, b.out))
    atomic_write_text(b.out / "report.html", to_html(cfg, r))
    headline = [dict(zip(HEADLINE, row, strict=True)) for row in r.head]
    write_json(b.out / "results.json", {**dataclasses.asdict(res), "headline": headline, "verdict": r.says})
    print_table(HEADLINE, r.head, title=f"minr bench {cfg.name}")


class Report(Stage):
    name, does = "report", "report.md, report.html and results.json"
    parallel = False

    def inputs(self, b: Bench) -> dict:
        """The stages' results, and the code that renders them: a report of newer code is rendered again."""
        return {s.name: stage_key(b.out, s.name) for s in COMPUTE if s.name in selected(b.cfg)} | {"code": git_sha()}

    def run(self, b: Bench, progress: bool) -> None:
        write_report(b, gather(b))


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def to_html(cfg, r: Rendered) -> str:
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
        f"<p>Stages: {html.escape(r.timing)}. {html.escape(r.machine)}</p>",
        "<section id='headline'><h2>Headline</h2>",
        _html_table(HEADLINE, r.head),
        f"<p>{html.escape(r.note)}</p></section>",
        *(
            [f"<section id='seeds'><h2>{SEEDS_TITLE}</h2>", _html_table(seeds.HEADERS, r.seed_level), "</section>"]
            if r.seed_level
            else []
        ),
        "<section id='paired'><h2>Paired MINR - MAE</h2>",
        _html_table(PAIRED_HEADERS, r.paired),
        "</section>",
        "<section id='verdict'><h2>Verdict (computed from the numbers)</h2>",
        "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in r.says) + "</ul>",
        "</section>",
    ]
    for title, headers, rows in r.per_stage:
        parts += [f"<section><h2>{html.escape(title)}</h2>", _html_table(headers, rows), "</section>"]
    for title, p in r.figures:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(
            f"<section><h2>{html.escape(title)}</h2>"
            f"<img alt='{html.escape(p.name)}' src='data:image/png;base64,{data}'></section>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)
