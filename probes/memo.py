"""Probe outcomes cached beside the features they come from: a linear probe's chosen head and predictions, and
k-NN predictions, keyed by the features' cache keys and every setting of the probe. Both are pure functions of
those inputs, so a run whose features are all cached recomputes nothing and gives the very same numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from minr.io import publish, tmp_path, writing
from minr.runtime import current
from probes.extract import FeatureSet
from probes.knn import knn_predict
from probes.linear import LRS, MIN_STEPS, WEIGHT_DECAYS, ProbeResult, linear_probe, standardised_head

VERSION = 1


def _path(cache_dir: Path, what: str, key: dict[str, Any]) -> tuple[Path, str]:
    text = json.dumps({"version": VERSION, "what": what, **key}, sort_keys=True)
    return cache_dir / "probes" / f"{what}-{hashlib.sha256(text.encode()).hexdigest()[:32]}.safetensors", text


def _load(path: Path, text: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") != text:
            return None
        return load_file(str(path)), json.loads(meta.get("info", "{}"))
    except (SafetensorError, OSError, ValueError):
        return None


def _store(path: Path, text: str, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    if not current().main:  # under torchrun every rank fits the same head; rank 0 keeps it
        return
    tmp = tmp_path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": text, "info": json.dumps(info)}
        )
    publish(tmp, path)


def linear(
    cache_dir: Path,
    train: FeatureSet,
    select: FeatureSet,
    evaluate: FeatureSet,
    num_classes: int,
    *,
    seed: int,
    solver: str,
    epochs: int,
) -> ProbeResult:
    """`linear_probe` on three feature sets, from the cache when these features were probed the same way before."""
    data = [(fs.features, fs.labels.long()) for fs in (train, select, evaluate)]
    if solver != "torch":  # only the torch probe has a small state to keep
        return linear_probe(*data, num_classes, seed=seed, solver=solver, epochs=epochs)
    key = {
        "train": train.key.digest(),
        "select": select.key.digest(),
        "eval": evaluate.key.digest(),
        "seed": seed,
        "epochs": epochs,
        "classes": num_classes,
        "grid": [LRS, WEIGHT_DECAYS, MIN_STEPS],
    }
    path, text = _path(Path(cache_dir), "linear", key)
    hit = _load(path, text) if path.exists() else None
    if hit is not None:
        t, info = hit
        state = {k: t[k] for k in ("weight", "bias", "mean", "std")}
        pred = t["predictions"].numpy()
        return ProbeResult(
            pred, info["accuracy"], info["chosen"], info["selection_accuracy"], standardised_head(state), state
        )
    r = linear_probe(*data, num_classes, seed=seed, solver=solver, epochs=epochs)
    info = {"accuracy": r.accuracy, "chosen": r.chosen, "selection_accuracy": r.selection_accuracy}
    _store(path, text, {**r.state, "predictions": torch.from_numpy(np.ascontiguousarray(r.predictions))}, info)
    return r


def knn(cache_dir: Path, train: FeatureSet, test: FeatureSet, num_classes: int, *, k: int, t: float) -> np.ndarray:
    """k-NN predictions of `test` against `train`, from the cache when computed before with the same settings."""
    key = {"train": train.key.digest(), "test": test.key.digest(), "k": k, "t": t, "classes": num_classes}
    path, text = _path(Path(cache_dir), "knn", key)
    hit = _load(path, text) if path.exists() else None
    if hit is not None:
        return hit[0]["predictions"].numpy()
    pred = knn_predict(train.features, train.labels.long(), test.features, num_classes=num_classes, k=k, temperature=t)
    pred = pred.argmax(1).numpy()
    _store(path, text, {"predictions": torch.from_numpy(np.ascontiguousarray(pred))}, {})
    return pred
