"""Pretraining commands: models, pretrain, inspect, reconstruct, reconstruct-grid, compare, import-mae."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cli.app import SEED, console, device_option, floats, main, quiet_option
from minr.config import PretrainConfig, check_override, parse_set, to_yaml
from probes.tables import print_table


@main.command("models")
def models_cmd() -> None:
    """List the registered models with their parameter counts."""
    from minr.models import get_spec, list_models

    specs = [get_spec(name) for name in list_models()]  # declared counts: nothing is built, torch is not imported
    rows = [(s.name, s.family, f"{s.params:,}", s.description) for s in specs]
    print_table(("model", "family", "parameters", "description"), rows)


@main.command("pretrain")
@click.option("--model", "model_name", required=True, help="A registered model (`minrctl models`).")
@click.option("--dataset", default=None, help="fashion-mnist, digits, imagefolder:PATH, indoor67:PATH, celeba:PATH.")
@click.option("--data-root", default=None, help="Where the dataset's files are (Fashion-MNIST's IDX files).")
@click.option("--epochs", type=int, default=None, help="Epochs (default: the preset's recipe).")
@click.option("--max-steps", type=int, default=None, help="Stop after N optimiser steps (smoke runs).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (default: the preset's recipe).")
@click.option("--seed", type=SEED, default=None, help="Seed for data order, masks and initialisation.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Config override, e.g. mask.ratio=0.6.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint.")
@click.option("--skip-bad-images", is_flag=True, help="Skip unreadable images (with a warning) instead of stopping.")
@click.option(
    "--dry-run", is_flag=True, help="Run every check the run makes before it starts, print the resolved config, exit."
)
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
    sets = parse_set(sets)
    for key, value in sets.items():  # keys and declared types refused before torch is imported
        if key != "model":  # --set model=... is the config builder's to refuse, with what to use instead
            check_override(PretrainConfig, key, value)
    from minr.build import default_config

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
    overrides.update(sets)
    cfg = default_config(model_name, overrides)
    from minr.train import prepare, pretrain  # torch, after the checks a config needs no torch for

    if dry_run:
        prepare(cfg, out, resume=resume)  # the checks the run makes before it starts (device, model, data, --out)
        click.echo(to_yaml(cfg), nl=False)
        return
    summary = pretrain(cfg, out, resume=resume, progress=not quiet)
    _print_summary(summary)


def _print_summary(summary: dict) -> None:
    rows = [(k, f"{v:.3f}" if isinstance(v, float) else str(v)) for k, v in summary.items() if k != "model"]
    print_table(("metric", "value"), rows, title=f"{summary['model']} after {summary['steps']} steps")


@main.command("inspect")
@click.argument("ckpt", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_cmd(ckpt: str, as_json: bool) -> None:
    """Show a checkpoint's kind, model, step, config and the SHA-256 of its weights, after checking its tensors
    against the architecture it names."""
    from finetune import classifier, seg_backbone  # noqa: F401  (they declare where their checkpoints keep the encoder)
    from minr.build import verify_tensors
    from minr.checkpoint import stored_weights_sha256

    meta = verify_tensors(ckpt)
    info = {
        "kind": meta["kind"],
        "model": meta["model"],
        "family": meta.get("family"),
        "step": meta["step"],
        "epoch": meta.get("epoch"),
        "git_sha": meta.get("git_sha"),
        "weights_sha256": stored_weights_sha256(ckpt),
        "config": meta["config"],
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


scale_option = click.option(
    "--scale",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Render MINR at this many times the size in the grids.",
)


@main.command("reconstruct")
@click.argument("ckpt_args", nargs=-1, type=click.Path())
@click.option(
    "--ckpt", "ckpts", multiple=True, help="A pretrained checkpoint; repeat to compare (or give them as arguments)."
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="The folder of the evaluation: PSNR tables, statistics, figures, grids.  [required]",
)
@click.option(
    "--dataset", "datasets", multiple=True, help="Evaluation dataset; repeat (default: each checkpoint's own)."
)
@click.option("--data-root", default=None, help="Where Fashion-MNIST's IDX files are.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option(
    "--mask-ratios", default=None, help="Comma-separated, each in (0, 1). [default: 0.5,0.6,0.7,0.75,0.8,0.9]"
)
@click.option("--mask-kinds", default=None, help="Comma-separated: random, block, bernoulli. [default: all three]")
@click.option("--max-images", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the evaluation masks.")
@click.option("--no-floors", is_flag=True, help="Leave out the floors (mean image, nearest visible pixel, inpainting).")
@click.option("--num-images", type=click.IntRange(min=1), default=8, show_default=True, help="Rows of the grids.")
@scale_option
@device_option
@quiet_option
def reconstruct_cmd(
    ckpt_args,
    ckpts,
    out,
    datasets,
    data_root,
    split,
    mask_ratios,
    mask_kinds,
    max_images,
    seed,
    no_floors,
    num_images,
    scale,
    device,
    quiet,
) -> None:
    """Reconstruction evaluation of pretrained checkpoints (MINR and MAE) under three PSNR protocols, mask ratios
    and kinds, in and out of domain, with floors and paired statistics (one checkpoint's grid alone:
    `minrctl reconstruct-grid`)."""
    from minr.errors import MinrError

    all_ckpts = tuple(ckpt_args) + tuple(ckpts)
    if not all_ckpts:
        raise MinrError("give at least one checkpoint (as an argument or with --ckpt)")
    if out is None or out.endswith(".png"):
        given = "no --out" if out is None else f"--out {out} is an image path"
        raise MinrError(
            f"{given}: the evaluation writes a folder, give --out DIR (one checkpoint's reconstruction grid: "
            "minrctl reconstruct-grid CKPT)"
        )
    from minr.build import encoder_skeleton
    from probes.recon.evaluate import ReconConfig
    from probes.recon.report import run_reconstruct

    own = tuple(dict.fromkeys(encoder_skeleton(c)[1]["config"]["data"]["name"] for c in all_ckpts))
    defaults = ReconConfig.__dataclass_fields__
    cfg = ReconConfig(
        ckpts=all_ckpts,
        datasets=tuple(datasets) or own,
        data_root=data_root,
        split=split,
        mask_ratios=floats(mask_ratios, "--mask-ratios") or defaults["mask_ratios"].default,
        mask_kinds=tuple(k.strip() for k in mask_kinds.split(",")) if mask_kinds else defaults["mask_kinds"].default,
        max_images=max_images,
        seed=seed,
        floors=not no_floors,
        scale=scale,
        grid_images=num_images,
        device=device,
    )
    run_reconstruct(cfg, out, progress=not quiet)
    console.print(f"wrote {out}/results.json, results.md, per_image.npz and figures")


@main.command("reconstruct-grid")
@click.argument("ckpt", type=click.Path())
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="The PNG file to write (default: reconstruction_x<scale>.png beside the checkpoint).",
)
@click.option("--data-root", default=None, help="Where Fashion-MNIST's IDX files are.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True)
@click.option("--num-images", type=click.IntRange(min=1), default=8, show_default=True, help="Rows of the grid.")
@scale_option
def reconstruct_grid_cmd(ckpt, out, data_root, split, num_images, scale) -> None:
    """One checkpoint's reconstructions of its own validation images under its own masks: rows of input, masked
    input, reconstruction, pasted (visible pixels kept) and ground truth."""
    from probes.recon.grid import reconstruction_grid

    path = out if out is not None else Path(ckpt).with_name(f"reconstruction_x{scale}.png")
    reconstruction_grid(ckpt, path, num_images=num_images, scale=scale, split=split, data_root=data_root)
    console.print(f"wrote {path}")


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Also write the table as Markdown.")
def compare_cmd(runs: tuple[str, ...], out: str | None) -> None:
    """Print the validation PSNR (three protocols), speed and memory of pretraining runs side by side."""
    from minr.io import atomic_write_text, output_location
    from minr.summary import COLUMNS, format_cell, load_summaries
    from probes.tables import markdown_table

    if out is not None:  # every file of the compared runs is an input: --out RUN/checkpoint.safetensors is refused
        files = [f for r in runs if Path(r).is_dir() for f in Path(r).iterdir() if f.is_file()]
        out = output_location(out, inputs=[*(Path(r) / "summary.json" for r in runs), *files], folder=False)
    rows = load_summaries(list(runs))
    headers, cells = [title for _, title in COLUMNS], [[format_cell(r.get(k)) for k, _ in COLUMNS] for r in rows]
    print_table(headers, cells, title="validation reconstruction, same data, masks and budget")
    if out is not None:
        atomic_write_text(out, markdown_table(headers, cells))


@main.command("import-mae")
@click.argument("file", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="The minr checkpoint to write.")
@click.option("--num-heads", type=click.IntRange(min=1), default=None, help="Default: 12 for ViT-B, 16 for ViT-L.")
@click.option("--norm-pix-loss/--no-norm-pix-loss", default=True, show_default=True, help="How it was trained.")
def import_mae_cmd(file: str, out: str, num_heads: int | None, norm_pix_loss: bool) -> None:
    """Convert an official MAE checkpoint (mae_pretrain_vit_base.pth layout) into a minr checkpoint, loading it
    without unpickling arbitrary objects; probe, fine-tune or export it like any minr MAE."""
    from minr.imports import import_mae

    path = import_mae(file, out, num_heads=num_heads, norm_pix_loss=norm_pix_loss)
    console.print(f"wrote {path}")
