"""Self-describing checkpoints in one safetensors file: nothing is ever unpickled.

Tensors: `model/<name>` (weights), `optim/<param index>/<key>` (optimiser state). Metadata (`__metadata__`,
strings only): `format` = "minr", `format_version`, and `meta`, a JSON object with one schema for every kind of
checkpoint (pretraining, fine-tuning, segmentation): `kind`, `model` and `model_args` (the registered encoder
and its constructor overrides), `family`, `config`
(the resolved config of the run), `step`, `epoch`, `git_sha`, `weights_sha256` (hashed at save time, so readers
that only need the identity of the weights never load them) and kind-specific extras. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minr.errors import MinrError
from minr.io import input_file, publish, tmp_path, writing

FORMAT = "minr"
FORMAT_VERSION = 2  # 2: `kind` and `weights_sha256` in every checkpoint's meta
KINDS = ("pretrain", "finetune", "segmentation")
REQUIRED = ("model", "config", "step")


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any] | None


def checkpoint_meta(
    kind: str,
    *,
    model: str,
    model_args: dict[str, Any],
    family: str,
    config: dict[str, Any],
    step: int,
    epoch: int,
    git_sha: str,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata every checkpoint carries; `extra` holds what one kind adds (seed, the pretrained checkpoint).
    `model` and `model_args` rebuild the encoder's architecture (`minr.models.create_model`)."""
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {KINDS}, got {kind!r}")
    return {
        "kind": kind,
        "model": model,
        "model_args": model_args,
        "family": family,
        "config": config,
        "step": step,
        "epoch": epoch,
        "git_sha": git_sha,
        **extra,
    }


def weights_sha256(model_state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights alone (names, dtypes, shapes, values), comparable across checkpoints."""
    h = hashlib.sha256()
    for name in sorted(model_state):
        t = model_state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optim_state: dict[str, Any] | None = None,
) -> None:
    path = Path(path)
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model_state.items()}
    meta = {**meta, "weights_sha256": weights_sha256(model_state)}
    if optim_state is not None:
        for idx, state in optim_state["state"].items():
            for key, value in state.items():
                tensors[f"optim/{idx}/{key}"] = torch.as_tensor(value).contiguous().cpu()
        meta["optim_param_groups"] = optim_state["param_groups"]
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    tmp = tmp_path(path)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with writing(path, size):
        save_file(tensors, str(tmp), metadata=metadata)
    publish(tmp, path)


def _refuse(path: Path, error: Exception) -> MinrError:
    """Why a file is not a readable minr checkpoint, said so the user knows what to do."""
    with open(path, "rb") as f:
        head = f.read(2)
    if head in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or zipfile.is_zipfile(path):
        return MinrError(
            f"{path} is a pickle (a torch.save or .pt/.pth file); minr never unpickles files, since unpickling runs "
            "code. If you trust it, convert it to safetensors (`minrctl import-mae` for MAE weights), else discard it"
        )
    return MinrError(f"{path} is not a readable minr checkpoint (safetensors: {error}); was it truncated?")


def _header(path: Path) -> dict[str, str]:
    """The checkpoint's validated metadata, read from the safetensors header alone (no tensors)."""
    input_file(path, "checkpoint", look_for="*.safetensors")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise _refuse(path, e) from None
    if metadata.get("format") != FORMAT:
        raise MinrError(f"{path} is a safetensors file but not a minr checkpoint (no format=minr metadata)")
    version = metadata.get("format_version", "0")
    if not version.isdigit():
        raise MinrError(f"{path} has a malformed format_version {version!r}; it was not written by minr")
    if int(version) > FORMAT_VERSION:
        raise MinrError(f"{path} has checkpoint format {version}; upgrade minr to read it")
    return metadata


def _meta(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        meta = json.loads(metadata.get("meta", ""))
    except json.JSONDecodeError:
        raise MinrError(f"{path}: its metadata is not valid JSON; the file is damaged") from None
    if not isinstance(meta, dict):
        raise MinrError(f"{path}: its metadata is not a JSON object; the file is damaged")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MinrError(f"{path}: its metadata has no {missing[0]!r}; the file is damaged or not minr's")
    meta.setdefault("kind", "pretrain")  # format 1 wrote pretraining checkpoints without a kind
    meta["format_version"] = int(metadata.get("format_version", "0"))
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    """Model name, family, config, step...: what a checkpoint says about itself, without loading its tensors."""
    path = Path(path)
    meta = _meta(path, _header(path))
    meta.pop("optim_param_groups", None)
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a minr checkpoint; anything else (a pickle, a truncated file, another tool's safetensors) is refused."""
    path = Path(path)
    meta = _meta(path, _header(path))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _refuse(path, e) from None
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    optim_state = None
    if "optim_param_groups" in meta:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, idx, key = k.split("/", 2)
                state.setdefault(int(idx), {})[key] = v
        optim_state = {"state": state, "param_groups": meta.pop("optim_param_groups")}
    return Checkpoint(meta=meta, model_state=model_state, optim_state=optim_state)


def stored_weights_sha256(path: str | Path) -> str:
    """The weights' hash from the header (written at save time); older checkpoints are loaded and hashed once."""
    meta = read_meta(path)
    return meta.get("weights_sha256") or weights_sha256(load_checkpoint(path).model_state)


def short_name(path: str | Path, taken: set[str]) -> str:
    """A short unique name for a checkpoint: its model, or `run folder/model` when another took the model's name."""
    name = read_meta(path).get("model", Path(path).stem)
    name = f"{Path(path).parent.name}/{name}" if name in taken else name
    taken.add(name)
    return name
