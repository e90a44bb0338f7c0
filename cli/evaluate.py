"""Evaluation commands: extract, probe, finetune, export, data."""

from __future__ import annotations

from collections.abc import Callable

import click

from cli.app import (
    SEED,
    ckpts_option,
    config_from,
    console,
    data_config,
    data_options,
    device_option,
    field_default,
    floats,
    kinds_help,
    lazy_option,
    main,
    quiet_option,
    refuse_inapplicable,
    run_options,
)
from minr.errors import MinrError

MASK_KINDS = click.Choice(["random", "bernoulli", "block"])


@main.command("extract")
@click.argument("ckpt")
@data_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@lazy_option("--kind", default=None, help=kinds_help())
@click.option("--layer", type=int, default=-1, show_default=True, help="Block index (negative counts from the end).")
@click.option("--mask-ratio", type=float, default=0.0, show_default=True, help="Test-time masking of the input.")
@click.option("--mask-kind", type=MASK_KINDS, default="random", show_default=True)
@click.option("--cache-dir", default=None, help="Feature cache (default $MINR_CACHE or ~/.cache/minr/features).")
@device_option
@quiet_option
def extract_cmd(
    ckpt, dataset, data_root, max_images, split, kind, layer, mask_ratio, mask_kind, cache_dir, device, quiet
):
    """Extract (and cache) frozen features of CKPT (or `pixels`) for one split."""
    from probes.extract import ExtractSpec, extract

    if not 0 <= mask_ratio < 1:
        raise MinrError(f"--mask-ratio must be in [0, 1), got {mask_ratio}")
    spec = ExtractSpec(
        ckpt=ckpt,
        data=data_config(dataset, data_root, max_images),
        split=split,
        kind=kind,
        layer=layer,
        mask_ratio=mask_ratio,
        mask_kind=mask_kind,
        device=device,
    )
    fs = extract(spec, cache_dir, progress=not quiet, log=console.print)
    speed = f", {fs.images_per_s:.0f} images/s" if fs.images_per_s else " (from the cache)"
    console.print(f"{tuple(fs.features.shape)} features of {split}{speed}")


@main.command("probe")
@click.option("--task", type=click.Choice(["classification"]), default="classification", show_default=True)
@ckpts_option
@data_options()
@lazy_option("--kind", "kinds", multiple=True, help=kinds_help(" Repeat, or `all` for every kind."))
@click.option("--method", "methods", multiple=True, type=click.Choice(["linear", "knn"]), help="Default: both.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Linear-probe seeds (mean ± std).")
@click.option("--solver", type=click.Choice(["torch", "sklearn"]), default="torch", show_default=True)
@click.option(
    "--select-on",
    type=click.Choice(["val", "test"]),
    default="val",
    show_default=True,
    help="Where hyper-parameters are chosen; `test` only reproduces papers and is labelled so.",
)
@click.option("--epochs", type=int, default=20, show_default=True, help="Linear-probe epochs.")
@click.option("--knn-k", type=int, default=20, show_default=True)
@click.option("--knn-t", type=float, default=0.07, show_default=True)
@click.option("--layer", type=int, default=-1, show_default=True)
@click.option("--mask-ratios", default=None, help="Test-time masking sweep, e.g. 0,0.25,0.5,0.75.")
@click.option("--mask-kind", type=MASK_KINDS, default="random", show_default=True)
@click.option("--no-pixels", is_flag=True, help="Leave out the raw-pixel baseline.")
@click.option("--cache-dir", default=None)
@run_options(resume=False)
def probe_cmd(task, dataset, data_root, max_images, mask_ratios, no_pixels, out, quiet, **params) -> None:
    """Linear probe and k-NN of frozen features, MINR against MAE, with the raw-pixel floor."""
    from probes.run import ProbeConfig, run_probe

    cfg = config_from(
        ProbeConfig,
        params,
        data=data_config(dataset, data_root, max_images),
        methods=tuple(params["methods"]) or ("linear", "knn"),
        mask_ratios=floats(mask_ratios, "--mask-ratios"),
        pixels_baseline=not no_pixels,
    )
    run_probe(cfg, out, progress=not quiet, log=console.print)
    console.print(f"wrote {out}/results.json, results.md, predictions.npz")


def _finetune_configs():
    from finetune.configs import FinetuneConfig, SegConfig

    return {"classification": FinetuneConfig, "segmentation": SegConfig}


def _default(name: str, before: str = "") -> Callable[[], str]:
    """The help text `before` + '[default: X]', or per task where the tasks differ; a function for `lazy_option`
    (the fine-tuning configs import torch)."""

    def text() -> str:
        configs = _finetune_configs()
        values = {t: field_default(c, name) for t, c in configs.items() if name in c.__dataclass_fields__}
        if len(set(map(str, values.values()))) == 1:
            default = f"[default: {next(iter(values.values()))}]"
        else:
            default = "[default: " + ", ".join(f"{v} ({t})" for t, v in values.items()) + "]"
        return f"{before} {default}" if before else default

    return text


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MinrError(f"{option}: expected comma-separated whole numbers like 1 or 0,1,2,3, got {text!r}") from None


@main.command("finetune")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), required=True)
@ckpts_option
@data_options(default=None)
@lazy_option("--epochs", type=click.IntRange(min=1), default=None, help=_default("epochs", "Classification."))
@lazy_option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help=_default("max_steps", "Stop each run after N steps."),
)
@lazy_option("--batch-size", type=click.IntRange(min=1), default=None, help=_default("batch_size"))
@lazy_option("--lr", type=float, default=None, help=_default("lr", "Base learning rate (head; blocks decay)."))
@lazy_option("--weight-decay", type=float, default=None, help=_default("weight_decay"))
@lazy_option("--layer-decay", type=float, default=None, help=_default("layer_decay"))
@lazy_option("--drop-path", type=float, default=None, help=_default("drop_path"))
@lazy_option("--label-smoothing", type=float, default=None, help=_default("label_smoothing", "Classification."))
@lazy_option("--mixup", type=float, default=None, help=_default("mixup", "Classification: Mixup alpha (0 = off)."))
@lazy_option("--cutmix", type=float, default=None, help=_default("cutmix", "Classification: CutMix alpha (0 = off)."))
@click.option("--trainable-blocks", type=int, default=None, help="Classification: only the last N blocks train.")
@click.option("--kind", default=None, help="Classification: the token pooling (default: the encoder's own).")
@click.option(
    "--regime",
    type=click.Choice(["full", "frozen"]),
    default=None,
    help="Segmentation: fine-tune the backbone, or freeze it under a light head. [default: full]",
)
@click.option(
    "--backbone",
    "backbones",
    multiple=True,
    type=click.Choice(["tokens", "inr", "inr+tokens", "pixels"]),
    help="Segmentation features (repeat for several): transformer tokens, per-pixel INR activations (MINR), both "
    "side by side, or pixels: the image itself under the same head, the floor. [default: tokens]",
)
@click.option(
    "--inr-layers",
    default=None,
    help="Segmentation: the INR hidden layers of the per-pixel features, e.g. 1 or 0,1,2,3 "
    "[default: the encoder's own]",
)
@click.option(
    "--inr-fit-steps",
    type=click.IntRange(min=0),
    default=None,
    help="Segmentation: Adam steps fitting each INR to its image before its activations are read; 0 reads the "
    "hypernetwork's prediction as it is [default: 30]",
)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--compile",
    is_flag=True,
    help="torch.compile the model trained (segmentation: its encoder); a resume may turn it on or off.",
)
@run_options(resume=True)
@click.pass_context
def finetune_cmd(ctx, task, dataset, data_root, max_images, out, resume, quiet, **params) -> None:
    """Fine-tune pretrained encoders for classification, or train mmsegmentation heads on them."""
    from minr.io import output_location

    folder = (dataset or "").partition(":")[2]  # every folder dataset is KIND:PATH; nothing is written inside one
    output_location(out, inputs=[*params["ckpts"], *([folder] if folder else [])])  # checked before any work
    cls = _finetune_configs()[task]
    fields = set(cls.__dataclass_fields__) | {"task", "out", "resume", "quiet", "dataset", "max_images"}
    if task == "classification":
        fields |= {"data_root"}
    refuse_inapplicable(ctx, fields, f"--task {task}")
    if task == "classification":
        from finetune.classification import run_finetune

        cfg = config_from(cls, params, data=data_config(dataset or "fashion-mnist", data_root, max_images))
        run_finetune(cfg, out, resume=resume, progress=not quiet)
    else:
        from finetune.segmentation import run_segmentation

        if not dataset:
            raise MinrError("--task segmentation needs --dataset fashion-scenes:PATH, ade20k:PATH or seg:PATH")
        layers = params.pop("inr_layers")
        cfg = config_from(
            cls,
            {**params, "backbones": params["backbones"] or None},
            dataset=dataset,
            max_images=max_images,
            inr_layers=None if layers is None else _ints(layers, "--inr-layers"),
        )
        run_segmentation(cfg, out, resume=resume, progress=not quiet)
    console.print(f"wrote {out}/results.json, results.md")


@main.command("export")
@click.argument("ckpt")
@click.option("--to", "target", type=click.Choice(["mmseg", "timm"]), required=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
def export_cmd(ckpt: str, target: str, out: str) -> None:
    """Write a pretrained encoder for mmseg (weights + UPerNet/ADE20K config) or timm (MAE only)."""
    from finetune.export import export
    from minr.io import output_location

    output_location(out, inputs=[ckpt])
    for what, path in export(ckpt, out, to=target).items():
        console.print(f"wrote {what}: {path}")


@main.group("data")
def data_group() -> None:
    """Make datasets."""


@data_group.command("make-fashion-scenes")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--n-train", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--n-val", type=click.IntRange(min=1), default=400, show_default=True)
@click.option("--size", type=int, default=56, show_default=True, help="Canvas side in pixels.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--data-root", default=None, help="Where Fashion-MNIST's IDX files are.")
def make_scenes_cmd(out, n_train, n_val, size, seed, data_root) -> None:
    """Segmentation scenes of 2-4 Fashion-MNIST garments, in mmseg's img_dir/ann_dir layout."""
    from finetune.scenes import make_fashion_scenes
    from minr.io import output_location

    output_location(out)
    path = make_fashion_scenes(out, n_train=n_train, n_val=n_val, size=size, seed=seed, data_root=data_root)
    console.print(f"wrote {n_train} train and {n_val} val scenes to {path} (use --dataset fashion-scenes:{path})")
