"""The bench's configuration: frozen dataclasses that validate themselves, read from a preset YAML shipped with
the package and changed with dotted `--set` overrides (`--set pretrain.steps=200`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from minr.config import apply_overrides, from_dict
from minr.errors import MinrError
from minr.models import list_models

STAGES = ("pretrain", "reconstruct", "probe", "finetune", "segment", "report")


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise MinrError(msg)


@dataclass(frozen=True)
class ExtraRun:
    """A further pretraining run for the reconstruction stage only (a second domain, a model variant)."""

    model: str
    name: str
    dataset: str | None = None
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PretrainStage:
    dataset: str | None = "fashion-mnist"
    data_root: str | None = None
    steps: int = 843
    batch_size: int = 64
    seed: int = 0
    curve: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)  # fractions of the budget kept for the learning curve
    set: dict[str, Any] = field(default_factory=dict)  # overrides for every model
    extra: tuple[ExtraRun, ...] = ()

    def __post_init__(self) -> None:
        _check(self.steps > 0 and self.batch_size > 0, "pretrain.steps and pretrain.batch_size must be positive")
        _check(
            all(0 <= f <= 1 for f in self.curve), f"pretrain.curve fractions must lie in [0, 1], got {list(self.curve)}"
        )

    def kept_steps(self) -> tuple[int, ...]:
        return tuple(sorted({round(f * self.steps) for f in self.curve}))


@dataclass(frozen=True)
class ReconstructStage:
    datasets: tuple[str, ...] = ("fashion-mnist", "digits", "photos")
    split: str = "test"
    mask_ratios: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
    mask_kinds: tuple[str, ...] = ("random", "block", "bernoulli")
    max_images: int = 1000


@dataclass(frozen=True)
class ProbeStage:
    dataset: str | None = "fashion-mnist"
    max_images: int | None = 10000
    seeds: int = 3
    epochs: int = 20
    mask_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    curve_max_images: int | None = 5000  # the learning-curve probes (default kind, one seed)


@dataclass(frozen=True)
class FinetuneStage:
    dataset: str | None = "fashion-mnist"
    max_images: int | None = 10000
    epochs: int = 2
    batch_size: int = 64
    seeds: int = 1


@dataclass(frozen=True)
class SegmentRegime:
    max_steps: int = 200
    batch_size: int = 8


@dataclass(frozen=True)
class SegmentStage:
    dataset: str | None = None  # None: Fashion-MNIST scenes made by the bench
    scenes_train: int = 2000
    scenes_val: int = 400
    backbones: tuple[str, ...] = ("tokens", "inr")
    frozen: SegmentRegime = field(default_factory=lambda: SegmentRegime(1500, 8))
    full: SegmentRegime = field(default_factory=lambda: SegmentRegime(200, 8))


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str = ""
    models: tuple[str, ...] = ("ginr_tiny", "transinr_tiny", "mae_tiny")
    stages: tuple[str, ...] = STAGES
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    reconstruct: ReconstructStage = field(default_factory=ReconstructStage)
    probe: ProbeStage = field(default_factory=ProbeStage)
    finetune: FinetuneStage = field(default_factory=FinetuneStage)
    segment: SegmentStage = field(default_factory=SegmentStage)
    expected_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds on the reference machine

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in list_models()]
        _check(not unknown, f"unknown model {unknown[0] if unknown else ''!r}; choose from {', '.join(list_models())}")
        _check(bool(self.models), "--models: give at least one model")
        bad = [s for s in self.stages if s not in STAGES]
        _check(not bad, f"unknown stage {bad[0] if bad else ''!r}; choose from {', '.join(STAGES)}")

    def check_data(self) -> None:
        """Every stage that runs knows its data (the paper preset leaves them to the user)."""
        needs = {"pretrain": "pretrain.dataset", "probe": "probe.dataset", "finetune": "finetune.dataset"}
        for stage, what in needs.items():
            value = getattr(self, stage).dataset
            _check(
                stage not in self.stages or value is not None,
                f"the {self.name} preset needs --set {what}=NAME (for example imagefolder:PATH)",
            )


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cli.bench.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str, overrides: dict[str, Any] | None = None, **fields: Any) -> BenchConfig:
    """A shipped preset, then `fields` (models, stages) and the user's dotted overrides; validated."""
    if name not in preset_names():
        raise MinrError(f"unknown preset {name!r}; choose {', '.join(preset_names())}")
    data = yaml.safe_load(resources.files("cli.bench.presets").joinpath(f"{name}.yaml").read_text())
    data.update({k: list(v) for k, v in fields.items() if v})
    overrides = dict(overrides or {})
    extra = overrides.pop("pretrain.extra", data.get("pretrain", {}).get("extra", []))  # --set replaces the list
    _check(isinstance(extra, list), f"pretrain.extra must be a list of runs (for example []), got {extra!r}")
    cfg = from_dict(BenchConfig, {**data, "pretrain": {**data.get("pretrain", {}), "extra": []}})
    cfg = apply_overrides(cfg, overrides)
    runs = tuple(from_dict(ExtraRun, e, "pretrain.extra.") for e in extra)
    from dataclasses import replace

    cfg = replace(cfg, pretrain=replace(cfg.pretrain, extra=runs))
    cfg.check_data()
    return cfg
