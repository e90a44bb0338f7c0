"""Pretraining commands: models, pretrain, inspect, reconstruct, compare."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch
from rich.table import Table

from cli.app import console, main
from minr.config import parse_set, to_yaml


@main.command("models")
def models_cmd() -> None:
    """List the registered models with their parameter counts."""
    from minr.models import create_model, get_spec, list_models

    table = Table("model", "family", "parameters", "description")
    with torch.device("meta"):
        for name in list_models():
            model = create_model(name)
            n = sum(p.numel() for p in model.parameters())
            table.add_row(name, model.family, f"{n:,}", get_spec(name).description)
    console.print(table)


@main.command("pretrain")
@click.option("--model", "model_name", required=True, help="A registered model (`minrctl models`).")
@click.option("--dataset", default=None, help="fashion-mnist, digits, imagefolder:PATH, indoor67:PATH, celeba:PATH.")
@click.option("--data-root", default=None, help="Where the dataset's files are (Fashion-MNIST's IDX files).")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the preset's recipe).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps (smoke runs).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (default: the preset's recipe).")
@click.option("--seed", type=int, default=None, help="Seed for data order, masks and initialisation.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override, e.g. mask.ratio=0.6.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (with a warning) instead of stopping.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def pretrain_cmd(
    model_name,
    dataset,
    data_root,
    epochs,
    max_steps,
    batch_size,
    seed,
    device,
    out,
    sets,
    resume,
    skip_bad_images,
    dry_run,
    quiet,
) -> None:
    """Pretrain a MINR hypernetwork or MAE; writes checkpoint, metrics.csv, config.yaml and summary.json."""
    from minr.build import default_config
    from minr.train import pretrain

    opts = {
        "data.name": dataset,
        "data.root": data_root,
        "train.epochs": epochs,
        "train.max_steps": max_steps,
        "train.batch_size": batch_size,
        "train.seed": seed,
        "train.device": device,
        "data.skip_bad_images": skip_bad_images or None,
    }
    overrides = {k: v for k, v in opts.items() if v is not None}
    overrides.update(parse_set(sets))
    cfg = default_config(model_name, overrides)
    if dry_run:
        click.echo(to_yaml(cfg), nl=False)
        return
    torch.manual_seed(cfg.train.seed)  # model initialisation
    summary = pretrain(cfg, out, resume=resume, progress=not quiet)
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    table = Table("metric", "value", title=f"{summary['model']} after {summary['steps']} steps")
    for k, v in summary.items():
        if k not in ("model",):
            table.add_row(k, f"{v:.3f}" if isinstance(v, float) else str(v))
    console.print(table)


@main.command("inspect")
@click.argument("ckpt", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(ckpt: str, as_json: bool) -> None:
    """Show a checkpoint's model, step, config and the SHA-256 of its weights."""
    from minr.checkpoint import load_checkpoint, weights_sha256

    c = load_checkpoint(ckpt)
    info = {
        "model": c.meta["model"],
        "family": c.meta.get("family"),
        "step": c.meta["step"],
        "epoch": c.meta.get("epoch"),
        "git_sha": c.meta.get("git_sha"),
        "weights_sha256": weights_sha256(c.model_state),
        "config": c.meta["config"],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if k != "config":
            console.print(f"[bold]{k}[/]: {v}")
    console.print("[bold]config[/]:")
    click.echo(to_yaml_dict(info["config"]), nl=False)


def to_yaml_dict(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)


@main.command("reconstruct")
@click.argument("ckpt", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="PNG path (default: beside CKPT).")
@click.option("--num-images", type=int, default=8, show_default=True)
@click.option("--scale", type=int, default=1, show_default=True, help="Render the INR at this many times the size.")
@click.option("--split", type=click.Choice(["val", "test"]), default="val", show_default=True)
@click.option("--data-root", default=None, help="Override the dataset location stored in the checkpoint.")
def reconstruct_cmd(ckpt, out, num_images, scale, split, data_root) -> None:
    """Write a PNG grid: input, masked input, reconstruction, pasted, ground truth (one row per image)."""
    from minr.reconstruct import reconstruction_grid

    path = Path(out) if out else Path(ckpt).with_name(f"reconstruction_x{scale}.png")
    reconstruction_grid(ckpt, path, num_images=num_images, scale=scale, split=split, data_root=data_root)
    console.print(f"wrote {path}")


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table as Markdown.")
def compare_cmd(runs: tuple[str, ...], out: str | None) -> None:
    """Print the validation PSNR (three protocols), speed and memory of pretraining runs side by side."""
    from minr.checkpoint import atomic_write_text
    from minr.summary import COLUMNS, format_cell, load_summaries, markdown_table

    rows = load_summaries(list(runs))
    table = Table(*(title for _, title in COLUMNS), title="validation reconstruction, same data, masks and budget")
    for r in rows:
        table.add_row(*(format_cell(r.get(k)) for k, _ in COLUMNS))
    console.print(table)
    if out:
        atomic_write_text(Path(out), markdown_table(rows))
