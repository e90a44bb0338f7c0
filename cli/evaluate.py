"""Evaluation commands: extract, probe, finetune, export, data."""

from __future__ import annotations

import click

from cli.app import console, data_config, data_options, main
from minr.errors import MinrError


@main.command("extract")
@click.argument("ckpt")
@data_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True)
@click.option(
    "--kind",
    default=None,
    help="Feature kind (MINR: data_mean, weight_mean, modulation, concat; MAE: cls, patch_mean, concat).",
)
@click.option("--layer", type=int, default=-1, show_default=True, help="Block index (negative counts from the end).")
@click.option("--mask-ratio", type=float, default=0.0, show_default=True, help="Test-time masking of the input.")
@click.option("--mask-kind", type=click.Choice(["random", "bernoulli", "block"]), default="random")
@click.option("--cache-dir", default=None, help="Feature cache (default $MINR_CACHE or ~/.cache/minr/features).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
def extract_cmd(
    ckpt, dataset, data_root, max_images, split, kind, layer, mask_ratio, mask_kind, cache_dir, device
) -> None:
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
    fs = extract(spec, cache_dir, log=console.print)
    speed = f", {fs.images_per_s:.0f} images/s" if fs.images_per_s else " (from the cache)"
    console.print(f"{tuple(fs.features.shape)} features of {split}{speed}")


def _floats(text: str | None) -> tuple[float, ...]:
    if not text:
        return ()
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise MinrError(f"--mask-ratios: expected comma-separated numbers like 0,0.25,0.5, got {text!r}") from None


@main.command("probe")
@click.option("--task", type=click.Choice(["classification"]), default="classification", show_default=True)
@click.option("--ckpt", "ckpts", multiple=True, required=True, help="A pretrained checkpoint; repeat to compare.")
@data_options
@click.option("--kind", "kinds", multiple=True, help="Feature kind(s) to probe; `all` for every kind.")
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
@click.option("--mask-kind", type=click.Choice(["random", "bernoulli", "block"]), default="random")
@click.option("--no-pixels", is_flag=True, help="Leave out the raw-pixel baseline.")
@click.option("--cache-dir", default=None)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--quiet", is_flag=True)
def probe_cmd(
    task,
    ckpts,
    dataset,
    data_root,
    max_images,
    kinds,
    methods,
    seeds,
    solver,
    select_on,
    epochs,
    knn_k,
    knn_t,
    layer,
    mask_ratios,
    mask_kind,
    no_pixels,
    cache_dir,
    device,
    out,
    quiet,
) -> None:
    """Linear probe and k-NN of frozen features, MINR against MAE, with the raw-pixel floor."""
    from probes.run import ProbeConfig, run_probe

    cfg = ProbeConfig(
        ckpts=tuple(ckpts),
        data=data_config(dataset, data_root, max_images),
        kinds=tuple(kinds),
        methods=tuple(methods) or ("linear", "knn"),
        seeds=seeds,
        solver=solver,
        select_on=select_on,
        epochs=epochs,
        knn_k=knn_k,
        knn_t=knn_t,
        layer=layer,
        mask_ratios=_floats(mask_ratios),
        mask_kind=mask_kind,
        pixels_baseline=not no_pixels,
        device=device,
        cache_dir=cache_dir,
    )
    run_probe(cfg, out, progress=not quiet, log=console.print)
    console.print(f"wrote {out}/results.json, results.md, predictions.npz")


@main.command("finetune")
@click.option("--task", type=click.Choice(["classification", "segmentation"]), required=True)
@click.option("--ckpt", "ckpts", multiple=True, required=True, help="A pretrained checkpoint; repeat to compare.")
@data_options
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--max-steps", type=int, default=None, help="Stop each run after N steps (smoke runs).")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Base learning rate (head; blocks decay).")
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--layer-decay", type=float, default=0.75, show_default=True)
@click.option("--drop-path", type=float, default=0.1, show_default=True)
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--mixup", type=float, default=0.0, show_default=True, help="Mixup alpha (0 = off).")
@click.option("--cutmix", type=float, default=0.0, show_default=True, help="CutMix alpha (0 = off).")
@click.option("--trainable-blocks", type=int, default=None, help="Partial fine-tuning: only the last N blocks.")
@click.option("--kind", default=None, help="Token pooling: data_mean|weight_mean (MINR), patch_mean|cls (MAE).")
@click.option(
    "--regime",
    type=click.Choice(["full", "frozen"]),
    default="full",
    show_default=True,
    help="Segmentation: fine-tune the backbone, or freeze it under a light head.",
)
@click.option(
    "--backbone",
    "backbones",
    multiple=True,
    type=click.Choice(["tokens", "inr"]),
    help="Segmentation features: transformer tokens, and/or per-pixel INR activations (MINR only).",
)
@click.option("--seeds", type=int, default=1, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--resume", is_flag=True, help="Continue interrupted runs in --out.")
@click.option("--quiet", is_flag=True)
def finetune_cmd(
    task,
    ckpts,
    dataset,
    data_root,
    max_images,
    epochs,
    max_steps,
    batch_size,
    lr,
    weight_decay,
    layer_decay,
    drop_path,
    label_smoothing,
    mixup,
    cutmix,
    trainable_blocks,
    kind,
    regime,
    backbones,
    seeds,
    device,
    out,
    resume,
    quiet,
) -> None:
    """Fine-tune pretrained encoders for classification, or train mmsegmentation heads on them."""
    data = data_config(dataset, data_root, max_images)
    if task == "classification":
        from finetune.classification import FinetuneConfig, run_finetune

        cfg = FinetuneConfig(
            ckpts=tuple(ckpts),
            data=data,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            layer_decay=layer_decay,
            drop_path=drop_path,
            label_smoothing=label_smoothing,
            mixup=mixup,
            cutmix=cutmix,
            trainable_blocks=trainable_blocks,
            kind=kind,
            seeds=seeds,
            device=device,
        )
        run_finetune(cfg, out, resume=resume, progress=not quiet)
    else:
        from finetune.segmentation import SegConfig, run_segmentation

        cfg = SegConfig(
            ckpts=tuple(ckpts),
            data_root=dataset,
            iters=max_steps or 200,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            layer_decay=layer_decay,
            regime=regime,
            backbones=tuple(backbones) or ("tokens",),
            seeds=seeds,
            device=device,
            max_images=max_images,
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

    for what, path in export(ckpt, out, to=target).items():
        console.print(f"wrote {what}: {path}")


@main.group("data")
def data_group() -> None:
    """Make datasets."""


@data_group.command("make-fashion-scenes")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--n-train", type=int, default=2000, show_default=True)
@click.option("--n-val", type=int, default=400, show_default=True)
@click.option("--size", type=int, default=56, show_default=True, help="Canvas side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-root", default=None, help="Where Fashion-MNIST's IDX files are.")
def make_scenes_cmd(out, n_train, n_val, size, seed, data_root) -> None:
    """Segmentation scenes of 2-4 Fashion-MNIST garments, in mmseg's img_dir/ann_dir layout."""
    from finetune.scenes import make_fashion_scenes

    path = make_fashion_scenes(out, n_train=n_train, n_val=n_val, size=size, seed=seed, data_root=data_root)
    console.print(f"wrote {n_train} train and {n_val} val scenes to {path} (use --dataset fashion-scenes:{path})")
