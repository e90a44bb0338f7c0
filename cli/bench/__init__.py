"""`minrctl bench` (the main job: every stage, one report) and `minrctl bench-speed`."""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import console, main
from minr.config import parse_set
from minr.errors import MinrError


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip()) if text else ()


@main.command("bench")
@click.option(
    "--preset",
    default="quick",
    show_default=True,
    help="quick (~10 min on 2 CPU cores), cpu-full (~7 h), cpu-long, paper.",
)
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Where every stage writes (empty, or a bench's own)."
)
@click.option("--models", default=None, help="Comma-separated models (default: the preset's).")
@click.option(
    "--stages", default=None, help="Comma-separated subset of pretrain,reconstruct,probe,finetune,segment,report."
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Preset override, e.g. pretrain.steps=300.")
@click.option("--force", is_flag=True, help="Replace the results of a bench with another configuration in --out.")
@click.option("--dry-run", is_flag=True, help="Print the resolved configuration and exit.")
@click.option("--quiet", is_flag=True, help="Plain log lines, no progress bars.")
@click.option(
    "--plan", is_flag=True, help="Train nothing: FLOPs, memory and time per stage, here and on GPUs (plan.md in --out)."
)
def bench_cmd(preset, out, models, stages, sets, force, dry_run, quiet, plan) -> None:
    """Pretrain every model under one budget, then reconstruct, probe, fine-tune and segment, and write one report
    (report.md, report.html, results.json). Stages already done with the same inputs are skipped; a killed bench
    continues where it stopped."""
    import dataclasses

    import yaml

    from cli.bench.config import load_preset
    from cli.bench.run import check_out, run_bench, validate
    from cli.bench.stages import selected

    cfg = validate(load_preset(preset, parse_set(sets), models=_names(models), stages=_names(stages)))
    if dry_run:
        check_out(Path(out), cfg, force)
        click.echo(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False), nl=False)
        return
    if plan:
        _plan(cfg, Path(out), quiet)
        return
    path = run_bench(cfg, out, quiet=quiet, force=force, say=(click.echo if quiet else None))
    if "report" in selected(cfg):
        console.print(f"the report: {path}/report.md, report.html and results.json")


def _plan(cfg, out: Path, quiet: bool) -> None:
    import dataclasses

    from cli.bench.plan import make_plan, markdown
    from cli.bench.run import PLAN_FILES, check_out
    from cli.bench.runs import Bench
    from minr.io import atomic_write_text, write_json
    from minr.runtime import resolve_device

    check_out(out, cfg, force=True)  # the plan writes only its own two files, into a bench's folder or a new one
    say = click.echo if quiet else (lambda m: console.print(m, highlight=False))
    plan = make_plan(Bench(cfg, out), resolve_device("auto"), say=say)
    text = markdown(plan)
    write_json(out / PLAN_FILES[0], dataclasses.asdict(plan))
    atomic_write_text(out / PLAN_FILES[1], text)
    click.echo(text)
    say(f"wrote {out}/{PLAN_FILES[1]} and {PLAN_FILES[0]}")


@main.command("bench-speed")
@click.option("--out", type=click.Path(file_okay=False), default="benchmarks/results/speed", show_default=True)
@click.option("--quick", is_flag=True, help="The smallest run (CI's smoke test): one tiny model, small matrices.")
@click.option("--models", default=None, help="Comma-separated presets (default: the tiny and paper ones).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--readme", type=click.Path(dir_okay=False), default=None, help="Refresh this README's speed table.")
@click.option(
    "--compile", "compiled", is_flag=True, help="Also time torch.compile'd training steps, interleaved with eager ones."
)
def bench_speed_cmd(out, quick, models, device, readme, compiled) -> None:
    """Training, extraction, rendering and probe speed against the machine's matmul ceiling (JSON + Markdown)."""
    from cli.bench.probe_timing import measure_probes
    from cli.bench.speed import markdown, run_speed, update_readme, write_report
    from minr.runtime import resolve_device

    names = _names(models)
    from minr.models import list_models

    unknown = [m for m in names if m not in list_models()]
    if unknown:
        raise MinrError(f"unknown model {unknown[0]!r}; choose from {', '.join(list_models())}")
    report = run_speed(quick=quick, device=resolve_device(device), models=names or None, compiled=compiled)
    report.probes = measure_probes(6000, 1000) if quick else measure_probes(60000, 10000)
    write_report(report, Path(out))
    if readme:
        update_readme(Path(readme), markdown(report))
    console.print(markdown(report))
