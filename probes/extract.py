"""Feature extraction through the encoder interface, cached on disk under a key of everything that matters.

The key (`FeatureKey`) holds the weights' SHA-256 (read from the checkpoint header, stored at save time), the
dataset split's fingerprint (its pixels, or its files' paths, sizes and modification times; its labels and
transform), the feature kind, the block, the mask and the dtype. The cache is checked before any model is built: a
fully cached run neither loads nor hashes a checkpoint. A cache file whose stored key differs, or that cannot be
read, is recomputed, never reused. Extraction writes chunk by chunk, so an interrupted run resumes from the chunks
already written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from minr import masking
from minr.build import model_from_checkpoint
from minr.config import DataConfig, MaskConfig
from minr.data import ImageDataset, data_inputs, load_split
from minr.io import output_location, publish, tmp_path, writing
from minr.parallel import broadcast, gather_rows, shard
from minr.progress import make_progress
from minr.runtime import SINGLE, Dist, barrier, distributed_device
from probes.features import PIXELS, EncoderRef, PixelFeatures, encoder_ref

CACHE_VERSION = 2


@dataclass(frozen=True)
class ExtractSpec:
    """What to extract. `ckpt` is a minr checkpoint or "pixels" (the raw-pixel floor, at `image_size`)."""

    ckpt: str
    data: DataConfig
    split: str = "train"
    kind: str | None = None
    layer: int = -1
    mask_ratio: float = 0.0
    mask_kind: str = "random"
    mask_seed: int | None = None  # default: the checkpoint's training seed
    image_size: int | None = None
    in_chans: int | None = None
    batch_size: int = 256
    device: str = "auto"


@dataclass(frozen=True)
class MaskSpec:
    """Test-time masking: the masking function's settings and the seed of its per-image streams."""

    mask: MaskConfig
    seed: int


@dataclass(frozen=True)
class FeatureKey:
    """Everything a cached feature depends on."""

    weights: str
    data: str
    split: str
    kind: str
    layer: int
    mask: MaskSpec | None = None
    dtype: str = "float32"
    version: int = CACHE_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32]


@dataclass
class FeatureSet:
    features: torch.Tensor  # (N, F) float32
    labels: torch.Tensor  # (N,) or (N, A)
    key: FeatureKey
    cached: bool
    images_per_s: float | None = None


def default_cache_dir() -> Path:
    return Path(os.environ.get("MINR_CACHE", Path.home() / ".cache" / "minr" / "features"))


def resolve_ref(spec: ExtractSpec) -> EncoderRef:
    return encoder_ref(spec.ckpt, image_size=spec.image_size or 28, in_chans=spec.in_chans or 1)


def mask_spec(spec: ExtractSpec, ref: EncoderRef) -> MaskSpec | None:
    if spec.mask_ratio <= 0:
        return None
    seed = ref.seed if spec.mask_seed is None else spec.mask_seed
    return MaskSpec(MaskConfig(kind=spec.mask_kind, ratio=spec.mask_ratio, patch=ref.mask_patch), seed)


def _read(path: Path, key: FeatureKey) -> dict[str, torch.Tensor] | None:
    """The tensors of a cache file if it is readable and was written under exactly this key."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("key")
        if stored != key.to_json():
            return None
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError):
        return None


def _write(path: Path, tensors: dict[str, torch.Tensor], key: FeatureKey) -> None:
    tmp = tmp_path(path)
    with writing(path, sum(t.numel() * t.element_size() for t in tensors.values())):
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key.to_json()})
    publish(tmp, path)


def extract(
    spec: ExtractSpec, cache_dir: Path | None = None, *, chunk_size: int = 2048, progress: bool = True, log=print
) -> FeatureSet:
    """Features of one split (kind `spec.kind`), from the cache when the same key was extracted before."""
    kinds = [spec.kind] if spec.kind else []
    return extract_kinds(spec, kinds, cache_dir, chunk_size=chunk_size, progress=progress, log=log)[0]


def extract_kinds(
    spec: ExtractSpec,
    kinds: list[str],
    cache_dir: Path | None = None,
    *,
    chunk_size: int = 2048,
    progress: bool = True,
    log: Callable[[str], None] = print,
    ref: EncoderRef | None = None,
) -> list[FeatureSet]:
    """Several feature kinds of one split: the encoder runs once per image for all kinds that are not cached yet;
    each kind is cached under its own key. Empty `kinds`: the encoder's default kind. One FeatureSet per kind."""
    ref = ref or resolve_ref(spec)
    kinds = kinds or [ref.default_kind]
    layer = ref.check(kinds, spec.layer)
    data = load_split(spec.data, spec.split, image_size=ref.image_size, in_chans=ref.in_chans)
    cache_dir = output_location(
        default_cache_dir() if cache_dir is None else cache_dir, what="--cache-dir", inputs=data_inputs(spec.data)
    )
    device, env = distributed_device(spec.device)
    if env.main:
        with writing(cache_dir):
            cache_dir.mkdir(parents=True, exist_ok=True)
    mask = mask_spec(spec, ref)
    fingerprint = data.fingerprint()
    keys = {k: FeatureKey(ref.weights_sha256, fingerprint, spec.split, k, layer, mask) for k in kinds}
    found: dict[str, FeatureSet] = {}
    for kind, key in keys.items():
        final = cache_dir / f"{key.digest()}.safetensors"
        hit = _read(final, key) if final.exists() else None
        if hit is not None and len(hit["labels"]) == len(data):
            log(f"features: cache hit {final.name} ({spec.ckpt}, {spec.split}, {kind})")
            found[kind] = FeatureSet(hit["features"], hit["labels"], key, cached=True)
        elif final.exists():
            log(f"features: {final.name} is stale or unreadable; recomputing")
    todo = {kind: keys[kind] for kind in broadcast([k for k in kinds if k not in found], env)}
    if todo:
        source = (
            PixelFeatures(ref) if ref.family == PIXELS else model_from_checkpoint(spec.ckpt, map_location=device)[0]
        )
        computed, ips = _extract_chunks(spec, source, ref, data, todo, cache_dir, chunk_size, device, env, progress)
        for kind, got in computed.items():
            if env.main:
                _write(cache_dir / f"{todo[kind].digest()}.safetensors", got, todo[kind])
                shutil.rmtree(cache_dir / f"{todo[kind].digest()}.partial", ignore_errors=True)
            found[kind] = FeatureSet(got["features"], got["labels"], todo[kind], cached=False, images_per_s=ips)
        barrier(env)
    return [found[kind] for kind in kinds]


@torch.inference_mode()
def _extract_chunks(
    spec, source, ref, data: ImageDataset, keys: dict[str, FeatureKey], cache_dir, chunk_size, device, env, progress
):
    """Chunk by chunk, every kind in `keys` at once; finished chunks are kept, so an interrupted run resumes.
    Under `torchrun` each rank computes its share of a chunk, every rank gets the whole, rank 0 writes it (the
    cache folder is shared by the ranks: one node, or a shared filesystem)."""
    parts: dict[str, list[dict[str, torch.Tensor]]] = {kind: [] for kind in keys}
    mask = next(iter(keys.values())).mask  # the same mask settings for every kind
    seen, busy = 0, 0.0
    bar = make_progress(progress and env.main)
    with bar:
        name = f"extract {Path(spec.ckpt).parent.name or spec.ckpt}:{','.join(keys)}"
        task = bar.add_task(name, total=len(data), info="")
        for c in range(-(-len(data) // chunk_size)):
            paths = {k: cache_dir / f"{key.digest()}.partial" / f"chunk_{c:05d}.safetensors" for k, key in keys.items()}
            chunk_keys = {
                k: dataclasses.replace(key, dtype=f"{key.dtype}/chunk{c}of{chunk_size}") for k, key in keys.items()
            }
            got = {k: _read(paths[k], chunk_keys[k]) if paths[k].exists() else None for k in keys}
            missing = broadcast([k for k, v in got.items() if v is None], env)
            idx = range(c * chunk_size, min(len(data), (c + 1) * chunk_size))
            if missing:
                t0 = time.perf_counter()
                mine = torch.utils.data.Subset(data, [idx[i] for i in shard(len(idx), env)])
                fresh = _run_chunk(spec, source, ref, mine, missing, device, mask, env)
                busy += time.perf_counter() - t0
                seen += len(idx)
                for k in missing:
                    if env.main:
                        with writing(paths[k].parent):
                            paths[k].parent.mkdir(exist_ok=True)
                        _write(paths[k], fresh[k], chunk_keys[k])
                    got[k] = fresh[k]
            for k in keys:
                parts[k].append(got[k])
            bar.update(task, advance=len(idx), info=f"{seen / busy:.0f} img/s" if busy else "cached")
    merged = {
        k: {"features": torch.cat([p["features"] for p in ps]), "labels": torch.cat([p["labels"] for p in ps])}
        for k, ps in parts.items()
    }
    return merged, (seen / busy if busy else None)


def _run_chunk(spec, source, ref: EncoderRef, subset, kinds, device, mask: MaskSpec | None, env: Dist = SINGLE):
    """Features of every kind of `subset` (this rank's share), gathered from every rank in the chunk's order."""
    feats: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    labels = []
    for images, y, idx in DataLoader(subset, batch_size=spec.batch_size):
        m = None
        if mask is not None:
            m = masking.make_masks(idx, mask.mask, ref.image_size, seed=mask.seed, salt=f"extract-{spec.split}")
            m = m.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = source.features(images.to(device), kinds, layer=spec.layer, mask=m, mask_patch=ref.mask_patch)
        for k in kinds:
            feats[k].append(out[k].float().cpu())
        labels.append(y)
    y = gather_rows(labels, env)
    return {k: {"features": gather_rows(v, env), "labels": y} for k, v in feats.items()}
