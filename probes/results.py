"""The probes' typed results, and the one rule that picks each encoder's best feature kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from probes.stats import Paired


@dataclass(frozen=True)
class Score:
    """Test accuracy of one method: mean and std over seeds (k-NN has one)."""

    mean: float
    std: float = 0.0
    per_seed: list[float] | None = None
    chosen: list[dict[str, float]] | None = None  # the linear probe's hyper-parameters per seed
    val: float | None = None  # mean accuracy on the selection split (validation, carved from train): what chooses


@dataclass(frozen=True)
class ProbeEntry:
    """One (encoder, feature kind)."""

    name: str
    encoder: str
    family: str
    model: str
    kind: str
    weights_sha256: str
    feature_dim: int
    extract_images_per_s: dict[str, float | None]
    cached: dict[str, bool]
    linear: Score | None = None
    knn: Score | None = None


@dataclass(frozen=True)
class SweepPoint:
    """Accuracy of a probe trained on clean features, on test features extracted under masking."""

    name: str
    family: str
    kind: str
    method: str
    mask_ratio: float
    accuracy: float


@dataclass(frozen=True)
class ProbeResults:
    config: dict[str, Any]
    entries: list[ProbeEntry]
    paired: list[Paired]
    mask_sweep: list[SweepPoint]
    selected_on: str
    num_classes: int
    test_images: int
    runtime_s: float
    git_sha: str
    hardware: dict[str, Any]
    task: str = "classification"
    best: dict[str, str] = field(default_factory=dict)  # encoder -> its entry chosen on validation (`best_entries`)


def best_entries(entries: list[ProbeEntry]) -> dict[str, str]:
    """Each encoder's best feature kind, chosen on the validation split: its entry with the highest validation
    accuracy of the linear probe (mean over seeds; k-NN's when no linear probe ran), first entry on ties. Test
    accuracy plays no part: the chosen kind is then scored once on test. The pixel floor is one entry of its own."""
    best: dict[str, ProbeEntry] = {}
    for e in entries:
        score = e.linear or e.knn
        if score is None or score.val is None:
            continue
        other = best.get(e.encoder)
        if other is None or score.val > (other.linear or other.knn).val:
            best[e.encoder] = e
    return {k: e.name for k, e in best.items()}
