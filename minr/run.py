"""A training run's set-up, the same for pretraining, classification fine-tuning and segmentation: lock the run
folder, open it (refusing what a resume must refuse), restore model and optimiser from its checkpoint, and train
through `minr.loop.fit`, which checkpoints with metadata that describes the run.

    spec = RunSpec(out / "finetune.safetensors", kind="finetune", identity=settings)
    with training_run(spec, resume=resume, fingerprints=fps) as run:
        model = build()
        run.start(model, optimizer, record={"model": ..., "model_args": ..., "family": ...})
        result = run.fit(dataset, step_fn, plan, device=device)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from minr.checkpoint import Checkpoint, checkpoint_meta, load_checkpoint, read_meta
from minr.data import check_same_data
from minr.errors import MinrError
from minr.io import git_sha, locked_dir
from minr.loop import FitResult, LoopPlan, StepResult, fit
from minr.runtime import Dist, barrier


@dataclass(frozen=True)
class RunSpec:
    """What a run is: its checkpoint (whose folder is the run folder), the kind of checkpoint it writes, and its
    resolved settings (`identity`, stored as the checkpoint's `config`), which a resume must match except in the
    `loose` keys (where or how verbosely it runs, not what it computes)."""

    path: Path
    kind: str
    identity: dict[str, Any]
    loose: frozenset[str] = frozenset()

    def open(self, *, resume: bool, fingerprints: dict[str, str] | None = None) -> Checkpoint | None:
        """The checkpoint to continue from, or None for a fresh run; writes nothing (dry runs call it too). With
        `fingerprints` (the data's splits), a resume on other data than the run's is refused."""
        ckpt = open_run(self.path, identity=self.identity, resume=resume, loose=self.loose, kind=self.kind)
        if fingerprints is not None:
            check_same_data(ckpt.meta.get("data_fingerprint") if ckpt else None, fingerprints, self.path.parent)
        return ckpt


@dataclass
class Run:
    """An opened run: the checkpoint it resumes (None: fresh) and, once `start`ed, the model and optimiser it
    trains, restored to `start_step`."""

    spec: RunSpec
    ckpt: Checkpoint | None
    fingerprints: dict[str, str] | None
    sha: str = field(default_factory=git_sha)
    model: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    record: dict[str, Any] = field(default_factory=dict)
    start_step: int = 0

    @property
    def resume_step(self) -> int | None:
        """The step of the checkpoint resumed, None for a fresh run."""
        return None if self.ckpt is None else self.ckpt.meta["step"]

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, record: dict[str, Any]) -> int:
        """Restore `model` and `optimizer` from the checkpoint (nothing for a fresh run) and return the step to
        start from. `record`: what every checkpoint stores besides the settings, step and git sha: the
        architecture (model, model_args, family) and what this kind adds (seed, the pretrained checkpoint)."""
        self.model, self.optimizer, self.record = model, optimizer, record
        self.start_step = restore(self.ckpt, model, optimizer)
        return self.start_step

    def meta(self, step: int, epoch: int) -> dict[str, Any]:
        """The metadata of the checkpoint of `step`."""
        data = {} if self.fingerprints is None else {"data_fingerprint": self.fingerprints}
        return checkpoint_meta(
            self.spec.kind, config=self.spec.identity, step=step, epoch=epoch, git_sha=self.sha, **self.record, **data
        )

    def fit(
        self,
        dataset: Dataset,
        step_fn: Callable[[Any, int], StepResult],
        plan: LoopPlan,
        *,
        device: torch.device,
        **loop: Any,
    ) -> FitResult:
        """Train the started model from `start_step` through `minr.loop.fit` (`loop`: its other options)."""
        if self.model is None:
            raise RuntimeError("Run.fit before Run.start")
        done = self.ckpt.meta if self.ckpt is not None else {}
        return fit(
            self.model,
            self.optimizer,
            dataset,
            step_fn,
            plan,
            ckpt_path=self.spec.path,
            meta=self.meta,
            device=device,
            start_step=self.start_step,
            before=(int(done.get("trained_images", 0)), float(done.get("trained_busy_s", 0.0))),
            **loop,
        )


@contextlib.contextmanager
def training_run(
    spec: RunSpec, *, resume: bool, fingerprints: dict[str, str] | None = None, lock: bool = True
) -> Iterator[Run]:
    """Hold the run folder (one process at a time; `lock=False` for the other ranks of a DDP run, which only make
    sure it exists) and open the run in it. A block that fails before writing leaves no trace (`locked_dir`)."""
    out = spec.path.parent
    with locked_dir(out) if lock else contextlib.nullcontext(out.mkdir(parents=True, exist_ok=True)):
        yield Run(spec, spec.open(resume=resume, fingerprints=fingerprints), fingerprints)


@contextlib.contextmanager
def main_locked(path: str | Path, env: Dist, what: str = "--out", **kw: Any) -> Iterator[bool]:
    """A command's output folder under `torchrun`: rank 0 creates and locks it (`locked_dir`, with its checks),
    the other ranks wait for that and only read from it; yields whether this rank writes."""
    if env.world == 1:
        with locked_dir(path, what, **kw):
            yield True
        return
    if env.main:
        with locked_dir(path, what, **kw):
            barrier(env)
            yield True
            barrier(env)
    else:
        barrier(env)
        yield False
        barrier(env)


def open_run(
    path: Path,
    *,
    identity: dict[str, Any],
    resume: bool,
    loose: frozenset[str] = frozenset(),
    kind: str | None = None,
) -> Checkpoint | None:
    """The checkpoint to continue from, or None for a fresh run. Refuses to overwrite a run without `resume`,
    to resume a checkpoint of another `kind` (a fine-tuning checkpoint where a pretraining run is expected), and
    one whose config (`identity`, what the checkpoint's meta stores as `config`) differs, except in `loose` keys."""
    if not path.exists():
        return None
    if not resume:
        raise MinrError(
            f"{path.parent} already holds a run ({path.name}); pass --resume to continue it or choose another --out"
        )
    found = read_meta(path).get("kind")
    if kind is not None and found != kind:
        raise MinrError(
            f"--resume: {path} is a {found} checkpoint, not a {kind} run's; resume it with the command that wrote "
            "it, or choose another --out"
        )
    ckpt = load_checkpoint(path)
    old, new = flatten(ckpt.meta.get("config", {})), flatten(identity)
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in loose)
    if diff:
        k = diff[0]
        raise MinrError(
            f"--resume into {path.parent} with different settings: {k} was {old.get(k)!r}, now {new.get(k)!r}"
            f" ({len(diff)} setting(s) differ); use the run's own settings or a new --out"
        )
    return ckpt


def restore(ckpt: Checkpoint | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load a checkpoint's weights and optimiser state; return its step (0 for a fresh run)."""
    if ckpt is None:
        return 0
    try:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(ckpt.optim_state)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise MinrError(f"the checkpoint to resume does not fit this model ({str(e).splitlines()[0]})") from None
    return ckpt.meta["step"]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; `model_args` stays one value."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "model_args":
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out
