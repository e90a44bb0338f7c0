"""Feature extraction through the encoder interface, cached on disk under a key of everything that matters.

The key holds the checkpoint's weight hash, the dataset split's fingerprint (its files or pixels, labels and
transform), the feature kind, the block, the mask settings and the dtype. A cache file whose stored key differs,
or that cannot be read, is recomputed, never reused. Extraction writes chunk by chunk, so an interrupted run
resumes from the chunks already written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from minr import masking
from minr.build import model_from_checkpoint
from minr.checkpoint import publish, weights_sha256
from minr.config import DataConfig, MaskConfig
from minr.data import ImageDataset, load_split
from minr.progress import make_progress
from minr.train import resolve_device
from probes.features import DEFAULT_KIND, check_kind, pool

CACHE_VERSION = 1
PIXELS = "pixels"


@dataclass(frozen=True)
class ExtractSpec:
    """What to extract. `ckpt` is a minr checkpoint or "pixels" (the raw-pixel baseline, at `image_size`)."""

    ckpt: str
    data: DataConfig
    split: str = "train"
    kind: str | None = None
    layer: int = -1
    mask_ratio: float = 0.0
    mask_kind: str = "random"
    mask_seed: int | None = None
    image_size: int | None = None
    in_chans: int | None = None
    batch_size: int = 256
    device: str = "auto"


@dataclass
class FeatureSet:
    features: torch.Tensor  # (N, F) float32
    labels: torch.Tensor  # (N,) or (N, A)
    key: dict[str, Any]
    cached: bool
    images_per_s: float | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINR_CACHE", Path.home() / ".cache" / "minr" / "features"))


class _Encoder:
    """A checkpoint's model (or the identity on pixels) with what the key and the masks need."""

    def __init__(self, spec: ExtractSpec, device: torch.device) -> None:
        if spec.ckpt == PIXELS:
            self.model, self.family, self.sha = None, "pixels", PIXELS
            self.image_size, self.in_chans = spec.image_size or 28, spec.in_chans or 1
            self.mask_patch, self.seed = 4, 0
        else:
            self.model, cfg, _ = model_from_checkpoint(spec.ckpt, map_location=device)
            self.family, self.sha = self.model.family, weights_sha256(self.model.state_dict())
            self.image_size, self.in_chans = self.model.image_size, self.model.in_chans
            self.mask_patch, self.seed = cfg.mask.patch, cfg.train.seed

    def features(
        self, images: torch.Tensor, kinds: list[str], layer: int, mask: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Every requested kind from one forward pass: {kind: (B, F)}."""
        if self.model is None:
            if mask is not None:
                images = masking.zero_fill(images, masking.to_pixels(mask, self.mask_patch, self.image_size))
            return {PIXELS: images.flatten(1)}
        depth = len(self.model.blocks)
        tokens = self.model.get_intermediate_layers(images, [layer], mask=mask, mask_patch=self.mask_patch)[0]
        return {k: pool(self.model, tokens, k, last_block=layer % depth == depth - 1) for k in kinds}


def _key(spec: ExtractSpec, enc: _Encoder, data: ImageDataset, kind: str) -> dict[str, Any]:
    mask = None
    if spec.mask_ratio > 0:
        seed = enc.seed if spec.mask_seed is None else spec.mask_seed
        mask = {"ratio": spec.mask_ratio, "kind": spec.mask_kind, "patch": enc.mask_patch, "seed": seed}
    layer = spec.layer % len(enc.model.blocks) if enc.model is not None else 0
    return {
        "version": CACHE_VERSION,
        "weights": enc.sha,
        "data": data.fingerprint(),
        "split": spec.split,
        "kind": kind,
        "layer": layer,
        "mask": mask,
        "dtype": "float32",
    }


def _key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _read(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The tensors of a cache file if it is readable and was written under exactly this key."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None
    return tensors if stored == json.dumps(key, sort_keys=True) else None


def _write(path: Path, tensors: dict[str, torch.Tensor], key: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)}
    )
    publish(tmp, path)


def extract(
    spec: ExtractSpec, cache_dir: Path | None = None, *, chunk_size: int = 2048, progress: bool = True, log=print
) -> FeatureSet:
    """Features of one split (kind `spec.kind`), from the cache when the same key was extracted before."""
    return extract_kinds(
        spec, [spec.kind] if spec.kind else [], cache_dir, chunk_size=chunk_size, progress=progress, log=log
    )[0]


def extract_kinds(
    spec: ExtractSpec,
    kinds: list[str],
    cache_dir: Path | None = None,
    *,
    chunk_size: int = 2048,
    progress: bool = True,
    log=print,
) -> list[FeatureSet]:
    """Several feature kinds of one split: the encoder runs once per image for all kinds that are not cached yet;
    each kind is cached under its own key. Empty `kinds`: the family's default kind. One FeatureSet per kind."""
    device = resolve_device(spec.device)
    enc = _Encoder(spec, device)
    kinds = kinds or [DEFAULT_KIND[enc.family]]
    for kind in kinds:
        check_kind(enc.family, kind)
    data = load_split(spec.data, spec.split, image_size=enc.image_size, in_chans=enc.in_chans)
    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    keys = {kind: _key(spec, enc, data, kind) for kind in kinds}
    found: dict[str, FeatureSet] = {}
    for kind, key in keys.items():
        final = cache_dir / f"{_key_hash(key)}.safetensors"
        hit = _read(final, key) if final.exists() else None
        if hit is not None and len(hit["labels"]) == len(data):
            log(f"features: cache hit {final.name} ({spec.ckpt}, {spec.split}, {kind})")
            found[kind] = FeatureSet(hit["features"], hit["labels"], key, cached=True)
        elif final.exists():
            log(f"features: {final.name} is stale or unreadable; recomputing")
    todo = {kind: keys[kind] for kind in kinds if kind not in found}
    if todo:
        computed, ips = _extract_chunks(spec, enc, data, todo, cache_dir, chunk_size, device, progress)
        for kind, got in computed.items():
            _write(cache_dir / f"{_key_hash(todo[kind])}.safetensors", got, todo[kind])
            shutil.rmtree(cache_dir / f"{_key_hash(todo[kind])}.partial", ignore_errors=True)
            found[kind] = FeatureSet(got["features"], got["labels"], todo[kind], cached=False, images_per_s=ips)
    return [found[kind] for kind in kinds]


@torch.inference_mode()
def _extract_chunks(spec, enc, data, keys, cache_dir, chunk_size, device, progress):
    """Chunk by chunk, every kind in `keys` at once; finished chunks are kept, so an interrupted run resumes."""
    parts: dict[str, list[dict[str, torch.Tensor]]] = {kind: [] for kind in keys}
    mask_key = next(iter(keys.values()))["mask"]  # the same mask settings for every kind
    seen, busy = 0, 0.0
    bar = make_progress(progress)
    with bar:
        name = f"extract {Path(spec.ckpt).parent.name or spec.ckpt}:{','.join(keys)}"
        task = bar.add_task(name, total=len(data), info="")
        for c in range(-(-len(data) // chunk_size)):
            paths = {
                k: cache_dir / f"{_key_hash(key)}.partial" / f"chunk_{c:05d}.safetensors" for k, key in keys.items()
            }
            chunk_keys = {k: {**key, "chunk": c, "chunk_size": chunk_size} for k, key in keys.items()}
            got = {k: _read(paths[k], chunk_keys[k]) if paths[k].exists() else None for k in keys}
            missing = [k for k, v in got.items() if v is None]
            idx = range(c * chunk_size, min(len(data), (c + 1) * chunk_size))
            if missing:
                t0 = time.perf_counter()
                fresh = _run_chunk(spec, enc, torch.utils.data.Subset(data, idx), missing, device, mask_key)
                busy += time.perf_counter() - t0
                seen += len(idx)
                for k in missing:
                    paths[k].parent.mkdir(exist_ok=True)
                    _write(paths[k], fresh[k], chunk_keys[k])
                    got[k] = fresh[k]
            for k in keys:
                parts[k].append(got[k])
            bar.update(
                task,
                advance=len(idx),
                info=f"{seen / busy:.0f} img/s" if busy else "cached",
            )
    merged = {
        k: {"features": torch.cat([p["features"] for p in ps]), "labels": torch.cat([p["labels"] for p in ps])}
        for k, ps in parts.items()
    }
    return merged, (seen / busy if busy else None)


def _run_chunk(spec, enc, subset, kinds, device, mask_key) -> dict[str, dict[str, torch.Tensor]]:
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    labels = []
    for images, y, idx in DataLoader(subset, batch_size=spec.batch_size):
        mask = None
        if mask_key is not None:
            cfg = MaskConfig(kind=mask_key["kind"], ratio=mask_key["ratio"], patch=mask_key["patch"])
            mask = masking.make_masks(idx, cfg, enc.image_size, seed=mask_key["seed"], salt=f"extract-{spec.split}")
            mask = mask.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = enc.features(images.to(device), kinds, spec.layer, mask)
        for k in kinds:
            feats[k].append(out[k].float().cpu())
        labels.append(y)
    y = torch.cat(labels)
    return {k: {"features": torch.cat(v), "labels": y} for k, v in feats.items()}
