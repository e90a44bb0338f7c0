"""Reconstruction grids: what checkpoints make of masked images.

`reconstruction_grid`: one checkpoint, its own validation masks, a plain PNG grid (`minrctl reconstruct-grid CKPT`).
`titled_grids`: every checkpoint of an evaluation side by side, with column titles (input, masked input, each
model's output, ground truth), at the headline condition (75% random masking, or the nearest measured); MINR
renders natively at `--scale`, other models are shown at their own resolution, upsampled. `--scale` is bounded by
the memory the grids need, before anything is rendered."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from minr import masking
from minr.build import encoder_skeleton, model_from_checkpoint
from minr.config import DataConfig
from minr.data import data_inputs, load_split
from minr.errors import MinrError
from minr.io import atomic_write_bytes, output_location

BYTES_PER_PIXEL = 4 * 4  # float32, and about four copies of every tile (render, paste, upsample, grid)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable, else the physical memory), None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def check_render_size(scale: int, image_size: int, chans: int, tiles: int) -> None:
    """Refuse a `--scale` whose grid of `tiles` images at `image_size * scale` px would need more than half of the
    memory available (1000x of a 28-px model is 28,000 px a side: gigabytes per tile), naming the largest that fits."""
    side, memory = image_size * scale, available_memory()
    per_scale = image_size**2 * (8 + BYTES_PER_PIXEL * chans * tiles)  # + 8: the (x, y) query coordinates
    if memory is None or side**2 * (8 + BYTES_PER_PIXEL * chans * tiles) <= memory // 2:
        return
    top = max(1, math.isqrt(memory // 2 // per_scale))
    raise MinrError(
        f"--scale {scale} renders {tiles} tiles of {side}x{side} px, about {scale**2 * per_scale / 2**30:.1f} GiB, "
        f"more than half of the {memory / 2**30:.1f} GiB of memory available; use --scale {top} or less, or fewer "
        "--num-images"
    )


@torch.no_grad()
def reconstruction_grid(
    ckpt: str,
    out: str | Path,
    *,
    num_images: int = 8,
    scale: int = 1,
    split: str = "val",
    data_root: str | None = None,
) -> torch.Tensor:
    """Rows of (input, masked input, reconstruction, pasted, ground truth), with the run's own val masks.

    With `scale` > 1 the INR renders natively at the larger size; the other columns are upsampled (nearest).
    """
    if scale < 1:
        raise MinrError(f"--scale must be >= 1, got {scale}")
    skeleton, _ = encoder_skeleton(ckpt)  # the header alone: the size is checked before any weight is read
    check_render_size(scale, skeleton.image_size, skeleton.in_chans, 5 * num_images)
    model, cfg, _ = model_from_checkpoint(ckpt)
    data_cfg = dataclasses.replace(cfg.data, root=data_root) if data_root else cfg.data
    out = output_location(out, inputs=[ckpt, *data_inputs(data_cfg)], folder=False)
    data = load_split(data_cfg, split, image_size=model.image_size, in_chans=model.in_chans)
    n = min(num_images, len(data))
    images = torch.stack([data[i][0] for i in range(n)])
    mask = masking.make_masks(range(n), cfg.mask, model.image_size, seed=cfg.train.seed, salt=split)
    size = model.image_size * scale
    recon = model.reconstruct(images, mask, cfg.mask.patch, size=size).clamp(0, 1)
    pixel_mask = masking.to_pixels(mask, cfg.mask.patch, model.image_size)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), size=(size, size), mode="nearest") if scale > 1 else x.float()

    masked = masking.zero_fill(images, pixel_mask)
    pm = up(pixel_mask).bool()
    pasted = torch.where(pm, recon, up(images))
    rows = torch.stack([up(images), up(masked), recon, pasted, up(images)], dim=1).flatten(0, 1)
    grid = make_grid(rows, nrow=5, padding=2, pad_value=1.0)
    buf = io.BytesIO()
    save_image(grid, buf, format="png")
    atomic_write_bytes(out, buf.getvalue())
    return grid


def render_rows(model, images: torch.Tensor, mask: torch.Tensor, patch: int, scale: int) -> tuple[torch.Tensor, int]:
    """A model's reconstructions of masked images at `scale` x the resolution where it can render (MINR), else at
    its own, upsampled (nearest). Returns ((B, C, S, S) in [0, 1], the scale actually rendered)."""
    size = images.shape[-1] * scale
    try:
        out = model.reconstruct(images, mask, patch, size=size)
        rendered = scale
    except MinrError:  # a model that predicts patches on its own grid
        out = F.interpolate(model.reconstruct(images, mask, patch), size=(size, size), mode="nearest")
        rendered = 1
    return out.clamp(0, 1), rendered


def _wrap(title: str, width: int = 16) -> str:
    """A column title on lines of at most `width` characters, broken after a run directory's name."""
    return "\n".join(textwrap.wrap(title.replace("/", "/ "), width, break_on_hyphens=False)).replace("/ ", "/")


@torch.inference_mode()
def titled_grids(cfg, names: list[str], out: Path) -> list[Path]:
    """One PNG per dataset: rows of images; columns input, masked input, each checkpoint's output, ground truth."""
    from probes.recon.analysis import headline_condition
    from probes.recon.evaluate import masks_for

    paths = []
    models = [model_from_checkpoint(c)[:2] for c in cfg.ckpts]
    kind, ratio = headline_condition(cfg)
    for dataset in cfg.datasets:
        model0, cfg0 = models[0]
        root = cfg.data_root if dataset == "fashion-mnist" else None
        data = load_split(
            DataConfig(name=dataset, root=root, max_images=cfg.max_images),
            cfg.split,
            image_size=model0.image_size,
            in_chans=model0.in_chans,
        )
        n = min(cfg.grid_images, len(data))
        images = torch.stack([data[i][0] for i in range(n)])
        masks = masks_for(cfg, dataset, kind, ratio, cfg0.mask.patch, model0.image_size, n)
        pixel = masking.to_pixels(masks, cfg0.mask.patch, model0.image_size)
        size = model0.image_size * cfg.scale

        def up(x: torch.Tensor, size: int = size) -> torch.Tensor:
            return F.interpolate(x, size=(size, size), mode="nearest") if x.shape[-1] != size else x

        columns = [("input", up(images)), ("masked input", up(masking.zero_fill(images, pixel)))]
        for name, (model, mcfg) in zip(names, models, strict=True):
            if (model.image_size, model.in_chans, mcfg.mask.patch) != (
                model0.image_size,
                model0.in_chans,
                cfg0.mask.patch,
            ):
                continue  # another resolution or mask grid: its own masks, not comparable side by side
            rows, rendered = render_rows(model, images, masks, mcfg.mask.patch, cfg.scale)
            columns.append((f"{name} (x{rendered})" if cfg.scale > 1 else name, rows))
        columns.append(("ground truth", up(images)))
        png = _titled_png(columns, n, f"{dataset} ({cfg.split}), {ratio * 100:g}% {kind} masking")
        path = out / f"grid_{dataset.replace(':', '_').replace('/', '_')}.png"
        atomic_write_bytes(path, png)
        paths.append(path)
    return paths


def _titled_png(columns: list[tuple[str, torch.Tensor]], n: int, title: str) -> bytes:
    """The PNG of `n` rows of tiles, a titled column per (title, (n, C, S, S) tiles in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(n, len(columns), figsize=(1.5 * len(columns), 1.5 * n + 0.5), squeeze=False)
    for j, (name, tiles) in enumerate(columns):
        for i in range(n):
            ax = axes[i, j]
            tile = tiles[i].permute(1, 2, 0).numpy()
            ax.imshow(
                tile[..., 0] if tile.shape[-1] == 1 else tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_wrap(name), fontsize=7)
    fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
