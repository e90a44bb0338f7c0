"""Self-describing checkpoints in one safetensors file: nothing is ever unpickled.

Tensors: `model/<name>` (weights), `optim/<param index>/<key>` (optimiser state). Metadata (`__metadata__`,
strings only): `format` = "minr", `format_version`, and `meta`, a JSON object with the model name, the resolved
config, the step, the optimiser's param groups, the RNG scheme and the git sha. Writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minr.errors import MinrError

FORMAT = "minr"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, Any] | None


def git_sha() -> str:
    """The commit of the code that runs, with '-dirty' when it has uncommitted changes; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if sha.returncode:
        return "unknown"
    return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def publish(tmp: Path, path: Path) -> None:
    """fsync a finished temporary file, give it the usual permissions (safetensors writes 0600), rename it."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(
    path: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    optim_state: dict[str, Any] | None = None,
) -> None:
    path = Path(path)
    tensors = {f"model/{k}": v.detach().contiguous().cpu() for k, v in model_state.items()}
    meta = dict(meta)
    if optim_state is not None:
        for idx, state in optim_state["state"].items():
            for key, value in state.items():
                tensors[f"optim/{idx}/{key}"] = torch.as_tensor(value).contiguous().cpu()
        meta["optim_param_groups"] = optim_state["param_groups"]
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "meta": json.dumps(meta)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata=metadata)
    publish(tmp, path)


def _header(path: Path) -> dict[str, str]:
    """The checkpoint's validated metadata, read from the safetensors header alone (no tensors)."""
    if not path.is_file():
        raise MinrError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise MinrError(f"{path} is not a readable minr checkpoint (safetensors: {e}); was it truncated?") from None
    if metadata.get("format") != FORMAT:
        raise MinrError(f"{path} is a safetensors file but not a minr checkpoint (no format=minr metadata)")
    if int(metadata.get("format_version", 0)) > FORMAT_VERSION:
        raise MinrError(f"{path} has checkpoint format {metadata['format_version']}; upgrade minr to read it")
    return metadata


def read_meta(path: str | Path) -> dict[str, Any]:
    """Model name, family, config, step...: what a checkpoint says about itself, without loading its tensors."""
    meta = json.loads(_header(Path(path))["meta"])
    meta.pop("optim_param_groups", None)
    return meta


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a minr checkpoint; anything else (a pickle, a truncated file, another tool's safetensors) is refused."""
    path = Path(path)
    metadata = _header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise MinrError(f"{path} is not a readable minr checkpoint (safetensors: {e}); was it truncated?") from None
    meta = json.loads(metadata["meta"])
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


def weights_sha256(model_state: dict[str, torch.Tensor]) -> str:
    """A hash of the weights alone (names, dtypes, shapes, values), comparable across checkpoints."""
    h = hashlib.sha256()
    for name in sorted(model_state):
        t = model_state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
