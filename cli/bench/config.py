"""The bench's configuration: frozen dataclasses read from a preset YAML shipped with the package and changed with
dotted `--set` overrides (`--set pretrain.steps=200`). Each section holds what a user sets for one stage; the
stages (`cli/bench/stages.py`) turn a section into the library configs they run, and `stages.validate` builds
them all when the preset is read, so a bad value is refused before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

import yaml

from minr.config import apply_overrides, from_dict
from minr.errors import MinrError
from minr.models import list_models


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
class PretrainSettings:
    dataset: str | None = "fashion-mnist"
    data_root: str | None = None  # every stage's data root unless its section names its own
    steps: int = 843  # bounds every run (the recipes' epochs do not)
    batch_size: int = 64
    seed: int = 0
    seeds: int = 1  # pretraining seeds seed, seed+1, ...: init, data order and masks change, all models share each
    equal_flops: bool = False  # also pretrain each cheaper model for the training FLOPs of each MINR model
    curve: tuple[float, ...] = (0.0, 0.1, 0.3, 1.0)  # fractions of the budget kept for the learning curve
    set: dict[str, Any] = field(default_factory=dict)  # overrides for every model
    extra: tuple[ExtraRun, ...] = ()

    def __post_init__(self) -> None:
        _check(self.steps > 0, f"pretrain.steps must be positive, got {self.steps}")
        _check(self.batch_size > 0, f"pretrain.batch_size must be positive, got {self.batch_size}")
        _check(self.seeds > 0, f"pretrain.seeds must be positive, got {self.seeds}")
        _check(
            all(0 <= f <= 1 for f in self.curve), f"pretrain.curve fractions must lie in [0, 1], got {list(self.curve)}"
        )
        names = [e.name for e in self.extra]
        _check(len(set(names)) == len(names), f"pretrain.extra: two runs are named {_twice(names)!r}")

    def kept_steps(self) -> tuple[int, ...]:
        return tuple(sorted({round(f * self.steps) for f in self.curve}))


@dataclass(frozen=True)
class ReconstructSettings:
    datasets: tuple[str, ...] = ("fashion-mnist", "digits", "photos")
    data_root: str | None = None
    split: str = "test"
    mask_ratios: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
    mask_kinds: tuple[str, ...] = ("random", "block", "bernoulli")
    max_images: int = 1000


@dataclass(frozen=True)
class ProbeSettings:
    dataset: str | None = "fashion-mnist"
    data_root: str | None = None
    max_images: int | None = 10000
    seeds: int = 3
    epochs: int = 20
    mask_ratios: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
    curve_max_images: int | None = 5000  # the learning-curve probes (default kind, one seed)


@dataclass(frozen=True)
class FinetuneSettings:
    dataset: str | None = "fashion-mnist"
    data_root: str | None = None
    max_images: int | None = 10000
    epochs: int = 2
    batch_size: int = 64
    seeds: int = 1
    scratch: bool = False  # also fine-tune every architecture from its random initialisation (the control)


@dataclass(frozen=True)
class SegmentRegime:
    max_steps: int = 200
    batch_size: int = 8
    lr: float = 2e-3


@dataclass(frozen=True)
class SegmentSettings:
    dataset: str | None = None  # None: Fashion-MNIST scenes made by the bench
    data_root: str | None = None  # where the scenes' Fashion-MNIST comes from
    scenes_train: int = 2000
    scenes_val: int = 400
    backbones: tuple[str, ...] = ("tokens", "inr", "pixels")  # pixels: the floor, the image under the same head
    inr_layers: tuple[int, ...] | None = None  # None: each encoder's own
    inr_fit_steps: int | None = None  # None: the library's default
    crop: int | None = None  # training crop of a large-image dataset (ADE20K: 512); None: whole images
    seeds: int = 1  # head seeds per checkpoint
    pretrain_seeds: int | None = None  # segment the first that many pretraining seeds' encoders (None: every seed)
    scratch: bool = False  # also train every architecture from its random initialisation (the control)
    # a frozen backbone's light head learns at 1e-2: at 2e-3 it still predicted background everywhere on INR
    # features after 200 steps (6.72 mIoU), at 1e-2 it left it within 100 (9.12)
    frozen: SegmentRegime = field(default_factory=lambda: SegmentRegime(600, 8, 1e-2))
    full: SegmentRegime = field(default_factory=lambda: SegmentRegime(600, 8))  # equal steps: the two are compared

    def __post_init__(self) -> None:
        for what in ("scenes_train", "scenes_val"):
            _check(getattr(self, what) > 0, f"segment.{what} must be positive, got {getattr(self, what)}")
        n = self.pretrain_seeds
        _check(n is None or n > 0, f"segment.pretrain_seeds must be positive (or null for every seed), got {n}")


@dataclass(frozen=True)
class PlanSettings:
    """What `--plan` needs beyond the stages: image counts of a dataset it cannot read (the paper's are on the
    machine that will run it), the segmentation images' side and classes, the GPUs and the MFU it assumes."""

    train_images: int | None = None
    test_images: int | None = None
    segment_size: int = 512  # the side of a segmentation image when segment.crop does not give it
    segment_classes: int = 150
    gpus: tuple[int, ...] = (1, 8)
    mfu: float = 0.4

    def __post_init__(self) -> None:
        for what in ("train_images", "test_images"):
            v = getattr(self, what)
            _check(v is None or v > 0, f"plan.{what} must be positive, got {v}")
        _check(self.segment_size >= 28, f"plan.segment_size must be at least 28, got {self.segment_size}")
        _check(self.segment_classes >= 2, f"plan.segment_classes must be at least 2, got {self.segment_classes}")
        _check(bool(self.gpus) and all(g >= 1 for g in self.gpus), f"plan.gpus must be counts >= 1, got {self.gpus}")
        _check(0 < self.mfu <= 1, f"plan.mfu must be in (0, 1], got {self.mfu}")


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str = ""
    models: tuple[str, ...] = ("ginr_tiny", "transinr_tiny", "mae_tiny")
    stages: tuple[str, ...] = ()  # empty: every stage
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    reconstruct: ReconstructSettings = field(default_factory=ReconstructSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    segment: SegmentSettings = field(default_factory=SegmentSettings)
    plan: PlanSettings = field(default_factory=PlanSettings)
    expected_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds at the preset's own budget

    def __post_init__(self) -> None:
        _check(bool(self.models), "--models: give at least one model")
        unknown = [m for m in self.models if m not in list_models()]
        _check(not unknown, f"unknown model {unknown[0] if unknown else ''!r}; choose from {', '.join(list_models())}")
        _check(len(set(self.models)) == len(self.models), f"--models names {_twice(self.models)!r} twice")
        _check(len(set(self.stages)) == len(self.stages), f"--stages names {_twice(self.stages)!r} twice")
        n, seeds = self.segment.pretrain_seeds, self.pretrain.seeds
        _check(n is None or n <= seeds, f"segment.pretrain_seeds is {n} but pretrain.seeds only {seeds}; lower it")

    def root(self, section: str) -> str | None:
        """A stage's data root: its section's own, else pretrain.data_root."""
        return getattr(self, section).data_root or self.pretrain.data_root


def _twice(names) -> str:
    """The first name that appears twice ('' when none does)."""
    return next((n for i, n in enumerate(names) if n in names[:i]), "")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("cli.bench.presets").iterdir() if p.name.endswith(".yaml"))


def _hint(preset: str, e: MinrError) -> MinrError:
    """The library's key errors point at `minrctl pretrain --dry-run`; in the bench the keys are the bench's."""
    text = str(e).replace("`minrctl pretrain --dry-run`", f"`minrctl bench --preset {preset} --dry-run`")
    return MinrError(text)


def load_preset(name: str, overrides: dict[str, Any] | None = None, **fields: Any) -> BenchConfig:
    """A shipped preset, then `fields` (models, stages) and the user's dotted overrides, typed and checked
    section by section (`stages.validate` then checks every stage's library configs)."""
    if name not in preset_names():
        raise MinrError(f"unknown preset {name!r}; choose {', '.join(preset_names())}")
    data = yaml.safe_load(resources.files("cli.bench.presets").joinpath(f"{name}.yaml").read_text())
    data.update({k: list(v) for k, v in fields.items() if v})
    overrides = dict(overrides or {})
    extra = overrides.pop("pretrain.extra", data.get("pretrain", {}).get("extra", []))  # --set replaces the list
    _check(isinstance(extra, list), f"pretrain.extra must be a list of runs (for example []), got {extra!r}")
    try:
        cfg = from_dict(BenchConfig, {**data, "pretrain": {**data.get("pretrain", {}), "extra": []}})
        cfg = apply_overrides(cfg, overrides)
    except MinrError as e:
        raise _hint(name, e) from None
    runs = tuple(from_dict(ExtraRun, e, "pretrain.extra.") if isinstance(e, dict) else _bad_extra(e) for e in extra)
    return replace(cfg, pretrain=replace(cfg.pretrain, extra=runs))


def _bad_extra(e: Any) -> ExtraRun:
    raise MinrError(f"pretrain.extra: each run is a mapping like {{name: x, model: ginr_tiny}}, got {e!r}")
