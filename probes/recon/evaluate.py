"""`minrctl reconstruct --out DIR`: per-image PSNR of every checkpoint and floor on every dataset, mask kind and
ratio, under the three protocols (full, pasted, masked), with bootstrap intervals and paired MINR - MAE tests.

The same image gets the same mask under every model (masks keyed by seed, dataset, split and image index), so
comparisons are paired. A model evaluated on a dataset of another size or channel count gets a named adaptation
(resize to the model's resolution; RGB -> gray or gray -> RGB), recorded in the results. Images are loaded once per
dataset and resolution; each condition is one batched `inference_mode` pass.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from minr import masking
from minr.build import encoder_skeleton, model_from_checkpoint, pretrain_config
from minr.checkpoint import short_name, stored_weights_sha256
from minr.config import MASK_KINDS, DataConfig, MaskConfig
from minr.data import dataset_sources, load_split
from minr.errors import MinrError
from minr.metrics import PROTOCOLS, psnr_protocols
from minr.parallel import gather_rows, shard
from minr.progress import make_progress
from minr.runtime import SINGLE, Dist, distributed_device
from probes.recon.floors import FLOORS, floor_reconstruction
from probes.stats import Paired, bootstrap_mean

RATIOS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)


@dataclass(frozen=True)
class ReconConfig:
    ckpts: tuple[str, ...]
    datasets: tuple[str, ...] = ("fashion-mnist",)
    data_root: str | None = None  # Fashion-MNIST's IDX files
    split: str = "test"
    mask_ratios: tuple[float, ...] = RATIOS
    mask_kinds: tuple[str, ...] = MASK_KINDS
    max_images: int | None = 1000
    seed: int = 0
    floors: bool = True
    scale: int = 1
    grid_images: int = 6
    batch_size: int = 256
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.ckpts:
            raise MinrError("give at least one checkpoint (--ckpt)")
        bad = [r for r in self.mask_ratios if not 0 < r < 1]
        if bad or not self.mask_ratios:
            raise MinrError(f"--mask-ratios must lie in (0, 1), got {bad[0] if bad else 'none'}")
        unknown = [k for k in self.mask_kinds if k not in MASK_KINDS]
        if unknown or not self.mask_kinds:
            raise MinrError(
                f"--mask-kinds: unknown kind {unknown[0] if unknown else ''!r}; use {', '.join(MASK_KINDS)}"
            )
        if self.split not in ("train", "val", "test"):
            raise MinrError(f"--split must be train, val or test, got {self.split!r}")
        for name in ("scale", "grid_images", "batch_size"):
            if getattr(self, name) < 1:
                raise MinrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_images is not None and self.max_images < 1:
            raise MinrError(f"--max-images must be >= 1, got {self.max_images}")


@dataclass(frozen=True)
class Cell:
    """One condition and protocol of one entry: mean PSNR over images with its bootstrap 95% interval."""

    dataset: str
    kind: str
    ratio: float
    protocol: str
    mean: float
    ci_low: float
    ci_high: float
    n: int  # images with a defined PSNR
    undefined: int = 0  # images left out: no masked pixel, so no masked or pasted PSNR

    def text(self) -> str:
        """mean [95% interval], or why there is none; with how many images were left out."""
        if self.n == 0:
            return "undefined (no masked pixel)"
        left = f" ({self.undefined} unmasked left out)" if self.undefined else ""
        return f"{self.mean:.2f} [{self.ci_low:.2f}, {self.ci_high:.2f}]{left}"


@dataclass(frozen=True)
class ReconEntry:
    """A checkpoint (family "minr" or "mae") or a floor (family "floor")."""

    name: str
    family: str
    model: str
    ckpt: str | None
    trained_on: str | None
    weights_sha256: str | None
    image_size: int
    in_chans: int
    mask_patch: int
    adaptations: dict[str, str]
    cells: list[Cell]
    images_per_s: float | None = None

    def cell(self, dataset: str, kind: str, ratio: float, protocol: str) -> Cell | None:
        return next(
            (c for c in self.cells if (c.dataset, c.kind, c.ratio, c.protocol) == (dataset, kind, ratio, protocol)),
            None,
        )


@dataclass(frozen=True)
class PairedCell:
    """MINR - MAE on the same images and masks, in one condition and protocol."""

    dataset: str
    kind: str
    ratio: float
    protocol: str
    comparison: Paired


@dataclass
class Collected:
    """Everything measured, kept for statistics: entries and their per-image PSNR arrays by key."""

    entries: list[ReconEntry] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # "name|dataset|kind|ratio|protocol" -> (N,)
    images: dict[tuple, torch.Tensor] = field(default_factory=dict)
    native: dict[str, tuple[int, int]] = field(default_factory=dict)  # dataset -> (size, channels)


def key(name: str, dataset: str, kind: str, ratio: float, protocol: str) -> str:
    return f"{name}|{dataset}|{kind}|{ratio:g}|{protocol}"


def native_shape(cfg: ReconConfig, dataset: str) -> tuple[int, int]:
    """(size, channels) of a dataset's own images: its arrays' shape, or its first file's."""
    from minr.sources import open_image

    source = dataset_sources(_data_config(cfg, dataset))[cfg.split]
    if source.arrays is not None:
        a = source.arrays
        return int(a.shape[1]), 1 if a.ndim == 3 else int(a.shape[3])
    img = open_image(source.files[0])
    return max(img.size), 1 if img.mode == "L" else 3


def adaptation(native: tuple[int, int], size: int, chans: int) -> str:
    """How a dataset's images are made to fit a model, in words ("native" when nothing is done)."""
    parts = []
    if native[0] == 0:
        parts.append(f"cropped at {size} px")
    elif native[0] != size:
        parts.append(f"resize {native[0]}->{size} px")
    if native[1] != chans:
        parts.append("RGB->gray" if chans == 1 else "gray->RGB")
    return ", ".join(parts) or "native"


def _data_config(cfg: ReconConfig, dataset: str, size: int | None = None) -> DataConfig:
    """The dataset's config (`size`, the model's resolution, is not used: `photos` stay 64-px crops scaled to the
    model, which measured harder for the nearest-visible floor than crops at the model's own size; `photos:SIZE`
    asks for the latter)."""
    root = cfg.data_root if dataset == "fashion-mnist" else None
    return DataConfig(name=dataset, root=root, max_images=cfg.max_images)


def _images(cfg: ReconConfig, got: Collected, dataset: str, size: int, chans: int) -> torch.Tensor:
    """The split's images at a resolution and channel count, loaded once: (N, C, H, W)."""
    k = (dataset, size, chans)
    if k not in got.images:
        data = load_split(_data_config(cfg, dataset, size), cfg.split, image_size=size, in_chans=chans)
        if len(data) == 0:
            raise MinrError(f"{dataset}: the {cfg.split} split has no images")
        got.images[k] = torch.stack([data[i][0] for i in range(len(data))])
    return got.images[k]


def masks_for(cfg: ReconConfig, dataset: str, kind: str, ratio: float, patch: int, size: int, n: int) -> torch.Tensor:
    """The cell masks of images 0..n-1: the same for every model of this grid (keyed by seed and image index)."""
    mc = MaskConfig(kind=kind, ratio=ratio, patch=patch)
    return masking.make_masks(range(n), mc, size, seed=cfg.seed, salt=f"recon/{dataset}/{cfg.split}")


def check_exact_counts(cfg: ReconConfig) -> None:
    """Random and block masks hide an exact count of cells, rounded up (MAE's count): a ratio below half a cell of a
    checkpoint's mask grid would mask one cell, many times the ratio the tables are titled with. Refused before any
    work (Bernoulli masks draw each cell: their unmasked images are left out and counted instead)."""
    exact = [k for k in cfg.mask_kinds if k != "bernoulli"]
    for ckpt in cfg.ckpts if exact else ():
        model, meta = encoder_skeleton(ckpt)
        patch = pretrain_config(ckpt, meta).mask.patch
        cells = math.ceil(model.image_size / patch) ** 2
        low = [r for r in cfg.mask_ratios if cells * r < 0.5]
        if low:
            raise MinrError(
                f"--mask-ratios {low[0]:g}: {exact[0]} masks hide a whole number of {ckpt}'s {cells} cells, and "
                f"{cells * low[0]:.2g} of a cell rounds up to one ({1 / cells:.1%} masked, not {low[0]:.1%}); use "
                f"ratios of at least {0.5 / cells:.3g}, or --mask-kinds bernoulli"
            )


def _score(name: str, got: Collected, dataset: str, kind: str, ratio: float, psnr: dict[str, np.ndarray]) -> list[Cell]:
    cells = []
    for protocol in PROTOCOLS:
        got.arrays[key(name, dataset, kind, ratio, protocol)] = psnr[protocol]
        mean, lo, hi = bootstrap_mean(psnr[protocol])  # over the images where it is defined
        defined = int(np.isfinite(psnr[protocol]).sum())
        cells.append(Cell(dataset, kind, ratio, protocol, mean, lo, hi, defined, len(psnr[protocol]) - defined))
    return cells


@torch.inference_mode()
def evaluate_checkpoint(
    cfg: ReconConfig, ckpt: str, name: str, got: Collected, device: torch.device, bar, env: Dist = SINGLE
) -> None:
    """Every condition's per-image PSNR of one checkpoint; under `torchrun` each rank reconstructs its share of
    the images and every rank gets them all."""
    model, pcfg, _ = model_from_checkpoint(ckpt, map_location=device)
    info, patch = model.info(), pcfg.mask.patch
    cells, adaptations, seen, busy = [], {}, 0, 0.0
    for dataset in cfg.datasets:
        images = _images(cfg, got, dataset, info.image_size, info.in_chans)
        adaptations[dataset] = adaptation(got.native[dataset], info.image_size, info.in_chans)
        for kind in cfg.mask_kinds:
            for ratio in cfg.mask_ratios:
                masks = masks_for(cfg, dataset, kind, ratio, patch, info.image_size, len(images))
                psnr: dict[str, list[torch.Tensor]] = {p: [] for p in PROTOCOLS}
                mine = torch.tensor(shard(len(images), env), dtype=torch.long)  # this rank's images
                t0 = time.perf_counter()
                for s in range(0, len(mine), cfg.batch_size):
                    i = mine[s : s + cfg.batch_size]
                    x, m = images[i].to(device), masks[i].to(device)
                    recon = model.reconstruct(x, m, patch)
                    for p, v in psnr_protocols(recon, x, masking.to_pixels(m, patch, info.image_size)).items():
                        psnr[p].append(v.cpu())
                busy += time.perf_counter() - t0
                seen += len(images)
                bar.update(bar.task_ids[0], advance=len(images), info=f"{name} {seen / busy:.0f} img/s")
                whole = {p: gather_rows(v, env).numpy() for p, v in psnr.items()}
                cells += _score(name, got, dataset, kind, ratio, whole)
    got.entries.append(
        ReconEntry(
            name=name,
            family=info.family,
            model=pcfg.model,
            ckpt=str(ckpt),
            trained_on=pcfg.data.name,
            weights_sha256=stored_weights_sha256(ckpt),
            image_size=info.image_size,
            in_chans=info.in_chans,
            mask_patch=patch,
            adaptations=adaptations,
            cells=cells,
            images_per_s=seen / busy if busy else None,
        )
    )


def evaluate_floors(cfg: ReconConfig, got: Collected, bar) -> None:
    """Every floor at every (resolution, channels, mask patch) that a checkpoint uses, with the same masks."""
    grids = sorted({(e.image_size, e.in_chans, e.mask_patch) for e in got.entries if e.family != "floor"})
    multi = len(grids) > 1
    for size, chans, patch in grids:
        for floor in FLOORS:
            name = f"floor:{floor}" + (f"@{size}px/{chans}ch/p{patch}" if multi else "")
            cells = []
            for dataset in cfg.datasets:
                images = _images(cfg, got, dataset, size, chans)
                train = load_split(_data_config(cfg, dataset, size), "train", image_size=size, in_chans=chans)
                train_mean = torch.stack([train[i][0] for i in range(min(len(train), 10000))]).mean(0)
                for kind in cfg.mask_kinds:
                    for ratio in cfg.mask_ratios:
                        masks = masks_for(cfg, dataset, kind, ratio, patch, size, len(images))
                        pixel = masking.to_pixels(masks, patch, size)
                        recon = floor_reconstruction(floor, images, pixel, train_mean)
                        if recon is None:  # the library behind this floor is not installed
                            break
                        psnr = {p: v.numpy() for p, v in psnr_protocols(recon, images, pixel).items()}
                        cells += _score(name, got, dataset, kind, ratio, psnr)
                        bar.update(bar.task_ids[0], advance=len(images), info=name)
            if cells:
                adapt = {d: adaptation(got.native[d], size, chans) for d in cfg.datasets}
                got.entries.append(ReconEntry(name, "floor", floor, None, None, None, size, chans, patch, adapt, cells))


def run_conditions(cfg: ReconConfig, names: list[str], progress: bool) -> Collected:
    """Measure every checkpoint and floor in every condition."""
    (device, env), got = distributed_device(cfg.device), Collected()
    got.native = {d: native_shape(cfg, d) for d in cfg.datasets}
    conditions = len(cfg.mask_kinds) * len(cfg.mask_ratios)
    per_dataset = {d: len(dataset_sources(_data_config(cfg, d))[cfg.split]) for d in cfg.datasets}
    total = conditions * sum(min(n, cfg.max_images or n) for n in per_dataset.values()) * (len(names) + 3 * cfg.floors)
    bar = make_progress(progress and env.main)
    with bar:
        bar.add_task("reconstruct", total=total, info="")
        for ckpt, name in zip(cfg.ckpts, names, strict=True):
            evaluate_checkpoint(cfg, ckpt, name, got, device, bar, env)
        if cfg.floors:
            evaluate_floors(cfg, got, bar)
    return got


def entry_names(ckpts: tuple[str, ...]) -> list[str]:
    taken: set[str] = set()
    return [short_name(c, taken) for c in ckpts]


def by_family(entries: list[ReconEntry], family: str) -> list[ReconEntry]:
    return [e for e in entries if e.family == family]


def comparable(a: ReconEntry, b: ReconEntry) -> bool:
    """Same images and masks (resolution, channels, mask grid) and the same pretraining data."""
    return (a.image_size, a.in_chans, a.mask_patch, a.trained_on) == (
        b.image_size,
        b.in_chans,
        b.mask_patch,
        b.trained_on,
    )
