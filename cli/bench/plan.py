"""`minrctl bench --plan`: what a bench will cost before it runs, per stage and in total.

The jobs are the stages' own configs (the runs, checkpoints, budgets and images the bench would use). Each distinct
(model, job kind) is measured once on this device with a few real steps on random inputs of the right shape:

- FLOPs per image, counted with `torch.utils.flop_counter` (matrix products, convolutions, attention: the work that
  grows with the model; machine-independent);
- seconds per image at the job's batch (or a smaller one for a large model), times the job's image passes: this
  machine's estimate;
- peak memory per process at batches 2 and 4, extrapolated linearly to the job's batch per process (fp32 on a
  CPU; bf16 autocast on a GPU needs less for activations).

GPU estimates divide the FLOPs by the GPU count x the published dense bf16 peak x the stated MFU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cli.bench.runs import Bench
from cli.bench.stage import Job
from cli.bench.stages import COMPUTE, selected
from minr.config import PretrainConfig, to_dict

INFERENCE_BATCH = 64  # extraction and reconstruction batches, as timed here
TIMED_FLOPS = 2e11  # the most FLOPs a timed step may take (a few seconds on a CPU)
# Published dense bf16 tensor-core peaks (no sparsity), FLOP/s.
GPUS = {"A100 (SXM)": 312e12, "H100 (SXM)": 989e12, "L40S": 362e12}  # an H200 has the H100's peak


@dataclass
class Cost:
    flops_per_image: float
    seconds_per_image: float
    mem_mb_at_2: float
    mem_mb_per_image: float

    def memory_mb(self, batch: int) -> float:
        return self.mem_mb_at_2 + self.mem_mb_per_image * (batch - 2)


@dataclass
class StagePlan:
    stage: str
    flops: float
    seconds_here: float
    peak_mb: dict[int, float]  # processes -> peak memory per process
    jobs: int


@dataclass
class Plan:
    preset: str
    device: str
    mfu: float
    gpu_counts: tuple[int, ...]
    stages: list[StagePlan] = field(default_factory=list)
    costs: dict[str, dict[str, float]] = field(default_factory=dict)
    assumptions: list[str] = field(default_factory=list)

    def gpu_seconds(self, peak: float, gpus: int, flops: float) -> float:
        return flops / (gpus * peak * self.mfu)


# -- the jobs ---------------------------------------------------------------------------------------------------
def dataset_sizes(b: Bench, name: str | None, root: str | None) -> tuple[int, int]:
    """(train, test) image counts: `plan.train_images`/`plan.test_images` when set, else the dataset's own."""
    p = b.cfg.plan
    if p.train_images and p.test_images:
        return p.train_images, p.test_images
    from minr.config import DataConfig
    from minr.data import load_split
    from minr.errors import MinrError

    try:
        data = DataConfig(name=name or "", root=root)
        return tuple(len(load_split(data, split, image_size=28, in_chans=1)) for split in ("train", "test"))
    except MinrError:
        raise MinrError(
            f"--plan: cannot count the images of {name!r}; give them with --set plan.train_images=N "
            "--set plan.test_images=N (Imagenette: 9469 and 3925)"
        ) from None


def jobs(b: Bench) -> list[Job]:
    """Every job of the selected stages, as each stage counts its work."""
    chosen, counted = set(selected(b.cfg)), {}

    def sizes(name: str | None, root: str | None) -> tuple[int, int]:
        if (name, root) not in counted:
            counted[name, root] = dataset_sizes(b, name, root)
        return counted[name, root]

    return [j for s in COMPUTE if s.name in chosen for j in s.jobs(b, sizes)]


# -- measuring one (model, kind) ----------------------------------------------------------------------------------
def _counted(fn: Callable[[], None]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _measure(make: Callable[[int], Callable[[], None]], device: torch.device, batch: int) -> tuple[float, ...]:
    """(FLOPs per image, seconds per image, peak MiB at batch 2, MiB per further image) of a job's step. Memory
    from batches 2 and 4 (batch norm in training needs two images); time at the job's own per-process `batch`,
    or at the largest batch of at most `TIMED_FLOPS` per step, and at least 4 (small batches cost more per image:
    then it is an upper bound)."""
    import time

    from cli.bench.speed import PeakMemory, sync, timed

    flops = _counted(make(2)) / 2  # also the warm-up
    peaks, seconds = [], 0.0
    for n in (2, 4):
        step = make(n)
        with PeakMemory(device) as mem:
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            seconds = (time.perf_counter() - t0) / n
        peaks.append(mem.peak_mb)
    timed_batch = min(batch, int(TIMED_FLOPS / max(flops, 1.0)))
    if timed_batch > 4:
        seconds = timed(make(timed_batch), device, 2) / timed_batch
    return flops, seconds, peaks[0], max(peaks[1] - peaks[0], 0.0) / 2


def _pretrain_step(cfg: PretrainConfig, device: torch.device):
    from cli.bench.speed import train_step_fn
    from minr.build import build_model

    model = build_model(cfg).to(device).train()
    return lambda n: train_step_fn(
        model, cfg.mask.patch, n, device, autocast=device.type == "cuda", render_fraction=cfg.train.render_fraction
    )


def _forward_step(cfg: PretrainConfig, device: torch.device, features: bool):
    from minr.build import build_model
    from minr.flops import random_batch

    model = build_model(cfg).to(device).eval()

    def make(n: int):
        x, mask, patch = random_batch(model, n, device, cfg.mask.patch, cfg.mask)

        @torch.inference_mode()
        def step() -> None:
            model.features(x, model.kind_names()) if features else model(x, mask, patch)

        return step

    return make


def _finetune_step(cfg: PretrainConfig, device: torch.device):
    import torch.nn.functional as F

    from finetune.classifier import EncoderClassifier
    from minr.build import build_model
    from minr.loop import apply_gradients
    from minr.optim import adamw

    encoder = build_model(cfg)
    model = EncoderClassifier(encoder, 10, kind=encoder.FINETUNE_KIND).to(device).train()
    opt = adamw(list(model.parameters()), lr=1e-4)

    def make(n: int):
        x = torch.rand(n, encoder.in_chans, encoder.image_size, encoder.image_size, device=device)
        y = torch.randint(0, 10, (n,), device=device)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            apply_gradients(model, opt, F.cross_entropy(model(x), y))

        return step

    return make


def _segment_step(cfg: PretrainConfig, seg_cfg, feature: str, size: int, classes: int, device, tmp: Path):
    """A training step of the real segmentor (built from a random-init checkpoint of the architecture) on random
    images and labels, through segmentation's own loss and the loop's update."""
    from finetune.segmentation import build_segmentor, plan_arms, random_batch, segmentation_loss
    from minr.build import initial_checkpoint
    from minr.loop import apply_gradients
    from minr.optim import adamw

    ckpt = tmp / f"{cfg.model}.safetensors"
    if not ckpt.is_file():
        initial_checkpoint(cfg, ckpt, git_sha="plan")
    one = dataclasses.replace(seg_cfg, ckpts=(str(ckpt),), names=(), groups=(), backbones=(feature,))
    with contextlib.redirect_stdout(None):
        arm = plan_arms(one)[0]
    model = build_segmentor(one, arm, classes).to(device).train()
    opt = adamw([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def make(n: int):
        batch = random_batch(n, arm.info.in_chans, size, classes)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            apply_gradients(model, opt, segmentation_loss(model, batch, device))

        return step

    return make


def measure(job: Job, cfg: PretrainConfig, b: Bench, device: torch.device, tmp: Path) -> Cost:
    if job.kind == "pretrain":
        make = _pretrain_step(cfg, device)
    elif job.kind in ("forward", "features"):
        make = _forward_step(cfg, device, job.kind == "features")
    elif job.kind == "finetune":
        make = _finetune_step(cfg, device)
    else:
        _, regime, feature = job.kind.split("/")
        seg = {s.name: s for s in COMPUTE}["segment"].configs(b)[regime]
        size, classes = segment_shape(b)
        make = _segment_step(cfg, seg, feature, size, classes, device, tmp)
    return Cost(*_measure(make, device, job.batch or INFERENCE_BATCH))


def segment_shape(b: Bench) -> tuple[int, int]:
    """The segmentation images' side and class count: the bench's scenes (56 px, 11 classes), else the training
    crop (or the plan's size) and the plan's classes."""
    p, s = b.cfg.plan, b.cfg.segment
    return (56, 11) if s.dataset is None else (s.crop or p.segment_size, p.segment_classes)


# -- the plan ---------------------------------------------------------------------------------------------------
def make_plan(b: Bench, device: torch.device, say: Callable[[str], None] = lambda m: None) -> Plan:
    from minr.runtime import hardware

    all_jobs, runs = jobs(b), {s.name: s for s in COMPUTE}["pretrain"].configs(b)
    if not all_jobs:
        from minr.errors import MinrError

        raise MinrError(f"--plan: --stages {','.join(b.cfg.stages)} run nothing to plan; add a computing stage")
    p = b.cfg.plan
    plan = Plan(b.cfg.name, f"{device} ({hardware().get('cpu')})", p.mfu, tuple(p.gpus))
    costs: dict[tuple[str, str], Cost] = {}

    def key(job: Job) -> tuple[str, str]:  # jobs of one architecture and kind cost the same per image
        cfg = runs[job.run]
        return json.dumps([cfg.model, to_dict(cfg)["model_args"]], sort_keys=True), job.kind

    with tempfile.TemporaryDirectory() as tmp:
        for job in all_jobs:
            cfg = runs[job.run]
            if key(job) not in costs:
                say(f"measuring {cfg.model} {job.kind} on {device}")
                torch.manual_seed(0)
                costs[key(job)] = measure(job, cfg, b, device, Path(tmp))
                plan.costs[f"{cfg.model} {job.kind}"] = dataclasses.asdict(costs[key(job)])
    by_stage: dict[str, StagePlan] = {}
    for job in all_jobs:
        cost = costs[key(job)]
        s = by_stage.setdefault(job.stage, StagePlan(job.stage, 0.0, 0.0, {}, 0))
        s.flops += cost.flops_per_image * job.images
        s.seconds_here += cost.seconds_per_image * job.images
        s.jobs += 1
        for n in (1, *plan.gpu_counts):
            per_process = max(job.batch // n, 2) if job.batch else 2
            s.peak_mb[n] = max(s.peak_mb.get(n, 0.0), cost.memory_mb(per_process))
    plan.stages = list(by_stage.values())
    plan.assumptions = [
        "FLOPs: counted per image with torch.utils.flop_counter (matmuls, convolutions, attention; elementwise ops "
        "left out), times each job's image passes (steps x batch, or images x conditions).",
        f"This machine: seconds per image measured on {device} at each job's batch ({INFERENCE_BATCH} for "
        f"inference), or the largest batch of at most {TIMED_FLOPS / 1e9:.0f} GFLOP per step and at least 4 (then "
        "an upper bound), "
        "times the image passes. Probe heads (logistic regression, k-NN) and evaluation passes are not counted.",
        "Peak memory per process: measured at batches 2 and 4 on this device (fp32 unless CUDA bf16 autocast), "
        "extrapolated linearly to the configured batch divided among the processes; inference at batch 2.",
        f"GPUs: the FLOPs at {p.mfu:.0%} of each GPU's published dense bf16 peak, divided evenly among the GPUs "
        "(no communication cost): " + ", ".join(f"{g} {v / 1e12:.0f} TFLOP/s" for g, v in GPUS.items()) + ".",
    ]
    return plan


def _h(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:,.1f} min" if seconds >= 60 else f"{seconds:,.1f} s"


def markdown(plan: Plan) -> str:
    from probes.tables import markdown_table

    counts = sorted({1, *plan.gpu_counts})
    gpu_cols = [(g, n) for g in GPUS for n in plan.gpu_counts]
    head = ["stage", "jobs", "PFLOP", "this machine"] + [f"peak MiB ({n} proc)" for n in counts]
    head += [f"{g} x{n}" for g, n in gpu_cols]
    rows = []
    total = StagePlan("total", sum(s.flops for s in plan.stages), sum(s.seconds_here for s in plan.stages), {}, 0)
    total.jobs = sum(s.jobs for s in plan.stages)
    total.peak_mb = {n: max(s.peak_mb.get(n, 0.0) for s in plan.stages) for n in counts}
    for s in [*plan.stages, total]:
        row = [s.stage, s.jobs, f"{s.flops / 1e15:,.3f}", _h(s.seconds_here)]
        row += [f"{s.peak_mb.get(n, 0.0):,.0f}" for n in counts]
        row += [_h(plan.gpu_seconds(GPUS[g], n, s.flops)) for g, n in gpu_cols]
        rows.append(row)
    lines = [f"# Plan: bench preset {plan.preset}", "", f"Measured on {plan.device}.", "", markdown_table(head, rows)]
    lines += ["Assumptions:", "", *(f"- {a}" for a in plan.assumptions), ""]
    return "\n".join(lines)
