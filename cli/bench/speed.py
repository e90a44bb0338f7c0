"""`minrctl bench-speed`: training, inference, rendering and probe speed against the machine's own ceiling.

The ceiling is a large fp32 (or bf16 on CUDA) matrix product timed first, in the same process: every achieved
GFLOP/s is reported as a ratio to it, so runs on different machines compare. FLOPs are counted, not estimated
(`torch.utils.flop_counter` on one forward + backward). Peak memory is the process's peak resident set, reset
before each measurement (CUDA: the allocator's peak). Training steps use the models' own forward, Adam, random
75% masking and real shapes; the timings are medians over steps after a warm-up step.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from minr.build import default_config
from minr.config import OptimConfig
from minr.flops import flops_per_image, pixel_index, random_batch
from minr.loop import apply_gradients
from minr.models import create_model
from minr.optim import build_optimizer

TINY = ("ginr_tiny", "transinr_tiny", "mae_tiny")
PAPER = ("ginr_paper", "transinr_paper", "mae_base_paper")
BATCHES = (1, 4, 16, 64)


@dataclass
class TrainSpeed:
    model: str
    batch: int
    step_s: float
    images_per_s: float
    gflop_per_image: float
    gflops: float
    ceiling_ratio: float
    peak_mb: float
    rise_mb: float  # the peak above the resident set before the measurement
    compiled: bool = False  # torch.compile'd (`train.compile`); its first step, compiling, is `warmup_s`
    warmup_s: float | None = None


@dataclass
class RenderSpeed:
    model: str
    scale: int
    pixels: int
    seconds: float
    peak_mb: float
    rise_mb: float


@dataclass
class SpeedReport:
    hardware: dict[str, Any]
    device: str
    ceiling_gflops: float
    train: list[TrainSpeed] = field(default_factory=list)
    extract: list[dict[str, Any]] = field(default_factory=list)
    render: list[RenderSpeed] = field(default_factory=list)
    probes: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# -- measurement helpers ----------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """The peak memory of a block: CUDA's allocator peak, or on CPU the resident set sampled every 2 ms by a
    thread (the kernel's own peak, VmHWM, cannot be reset on every machine). `.peak_mb` and `.rise_mb` (the peak
    above the resident set at the start) are set on exit."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb, self.rise_mb = device, float("nan"), float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):  # give freed memory back, so the start is what is in use
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        self.start = self.peak_mb = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, _rss_mb())
        self.rise_mb = self.peak_mb - self.start


def matmul_ceiling(device: torch.device, n: int = 2048, reps: int = 5) -> float:
    """GFLOP/s of the best of `reps` n x n x n products (fp32 on CPU, bf16 on CUDA)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def train_step_fn(
    model,
    patch: int,
    batch: int,
    device: torch.device,
    *,
    autocast: bool,
    render_fraction: float = 1.0,
    optim: OptimConfig | None = None,
) -> Callable[[], None]:
    """One step of the model's pretraining loss on random images with 75% random masks, through the optimiser
    training builds (`minr.optim.build_optimizer`, fused) with `optim`'s settings (default: Adam)."""
    opt = build_optimizer(model, optim or OptimConfig(lr=1e-4))
    x, mask, patch = random_batch(model, batch, device, patch)
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    extra = pixel_index(model, device, render_fraction)

    def step() -> None:
        with ctx:
            loss = model(x, mask, patch, **extra).loss
        opt.zero_grad(set_to_none=True)
        apply_gradients(model, opt, loss)

    return step


def timed_together(fns: dict[Any, Callable[[], None]], device: torch.device, steps: int) -> dict[Any, float]:
    """Median seconds of each function's `steps` calls, the calls interleaved (a, b, a, b, ...) so that a drift
    of the machine's speed falls on every function alike; each is warmed up first (compiled, if it compiles)."""
    for fn in fns.values():
        fn()
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for _ in range(steps):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def timed(fn: Callable[[], None], device: torch.device, steps: int) -> float:
    """Median seconds of `steps` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def preset_model(name: str, device: torch.device, **model_args: Any):
    """A preset's model (seed 0, `model_args` overriding its own) and the mask patch of its recipe."""
    torch.manual_seed(0)
    return create_model(name, **model_args).to(device), default_config(name).mask.patch


# -- the benchmark ----------------------------------------------------------------------------------------------
def measure_training(
    name: str,
    batches: tuple[int, ...],
    device: torch.device,
    ceiling: float,
    *,
    steps: int,
    budget_s: float,
    autocast: bool = False,
    compiled: bool = False,
) -> list[TrainSpeed]:
    """Step speed at each batch size, skipping sizes whose estimated step exceeds `budget_s`. With `compiled`, a
    torch.compile'd copy of the model (built with the same seed: the same initial weights) is timed beside the
    eager one, their steps interleaved; it is compiled for each batch size anew, static-shaped, as a training run
    of that batch compiles it."""
    model, patch = preset_model(name, device)
    model.train()
    flops = flops_per_image(model, patch, device)
    models = {False: model}
    if compiled:
        models[True] = preset_model(name, device)[0]
        models[True].train()
    out, per_image = [], None
    for b in batches:
        if per_image is not None and per_image * b * (steps + 1) * len(models) > budget_s:
            break
        fns, peaks, warm = {}, {}, {}
        if compiled:
            torch._dynamo.reset()  # no graph of another batch size: a fresh, static compile
            models[True].compile(dynamic=False)
        for c, m in models.items():  # memory and the first (compiling) step of each, alone
            fns[c] = train_step_fn(m, patch, b, device, autocast=autocast, optim=default_config(name).optim)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                fns[c]()
                sync(device)
                warm[c] = time.perf_counter() - t0
            peaks[c] = mem
        step_s = timed_together(fns, device, steps)
        per_image = step_s[False] / b
        for c in models:
            gflops = flops * b / step_s[c] / 1e9
            mem = peaks[c]
            row = (name, b, step_s[c], b / step_s[c], flops / 1e9, gflops, gflops / ceiling, mem.peak_mb, mem.rise_mb)
            out.append(TrainSpeed(*row, compiled=c, warmup_s=warm[c]))
    return out


@torch.inference_mode()
def measure_render(name: str, scales: tuple[int, ...], device: torch.device) -> list[RenderSpeed]:
    """Time and peak memory of rendering one image's INR at several multiples of its resolution."""
    model, patch = preset_model(name, device)
    model.eval()
    x, mask, patch = random_batch(model, 1, device, patch)
    out = []
    for s in scales:
        size = model.image_size * s
        with PeakMemory(device) as mem:
            seconds = timed(lambda size=size: model.reconstruct(x, mask, patch, size=size), device, 1)
        out.append(RenderSpeed(name, s, size * size, seconds, mem.peak_mb, mem.rise_mb))
    return out


@torch.inference_mode()
def measure_extract(name: str, device: torch.device, batch: int = 256, steps: int = 2) -> dict[str, Any]:
    """Feature extraction (every feature kind from one pass) images/s."""
    model, patch = preset_model(name, device)
    model.eval()
    x, _, _ = random_batch(model, batch, device, patch)
    kinds = model.kind_names()
    seconds = timed(lambda: model.features(x, kinds), device, steps)
    return {"model": name, "batch": batch, "images_per_s": batch / seconds}


def run_speed(
    *, quick: bool, device: torch.device, models: tuple[str, ...] | None = None, compiled: bool = False
) -> SpeedReport:
    from minr.runtime import hardware

    ceiling = matmul_ceiling(device, n=1024 if quick else 2048)
    report = SpeedReport(hardware(), str(device), ceiling)
    names = models or (TINY[:1] if quick else TINY + PAPER)
    for name in names:
        paper = "paper" in name
        batches = (4,) if quick else ((1, 4, 16) if paper and device.type == "cpu" else BATCHES)
        report.train += measure_training(
            name,
            batches,
            device,
            ceiling,
            steps=1 if quick else 3,
            budget_s=30 if quick else 150,
            autocast=device.type == "cuda",
            compiled=compiled,
        )
        report.extract.append(measure_extract(name, device, batch=8 if quick or paper else 256))
        if not name.startswith("mae"):
            report.render += measure_render(name, (1, 2) if quick else (1, 2, 4, 8), device)
    return report


def markdown(report: SpeedReport) -> str:
    from probes.tables import markdown_table

    hw = report.hardware
    rows = [
        [
            t.model + (" (compiled)" if t.compiled else ""),
            t.batch,
            f"{t.step_s:.3f}",
            f"{t.images_per_s:,.2f}" if t.images_per_s < 10 else f"{t.images_per_s:,.1f}",
            f"{t.gflop_per_image:.2f}",
            f"{t.gflops:.0f}",
            f"{100 * t.ceiling_ratio:.0f}%",
            f"{t.peak_mb:,.0f}",
            f"{t.rise_mb:,.0f}",
        ]
        for t in report.train
    ]
    parts = [
        f"Measured on {hw.get('cpu')} ({hw.get('cpu_count')} cores, {hw.get('threads')} threads), {report.device}, "
        f"torch {hw.get('torch')}. Matmul ceiling: {report.ceiling_gflops:.0f} GFLOP/s.\n",
        markdown_table(
            ["model", "batch", "step s", "img/s", "GFLOP/img", "GFLOP/s", "of ceiling", "peak MiB", "rise MiB"], rows
        ),
    ]
    if report.extract:
        parts.append(
            markdown_table(
                ["model", "batch", "extract img/s"],
                [[e["model"], e["batch"], f"{e['images_per_s']:,.0f}"] for e in report.extract],
            )
        )
    if report.render:
        rows = [
            [r.model, f"{r.scale}x", f"{r.pixels:,}", f"{r.seconds:.3f}", f"{r.peak_mb:,.0f}", f"{r.rise_mb:,.0f}"]
            for r in report.render
        ]
        parts.append(markdown_table(["model", "render scale", "pixels", "seconds", "peak MiB", "rise MiB"], rows))
    if report.probes:
        p = report.probes
        parts.append(
            f"Linear probe on {p['train_features']:,} x {p['dim']} features: {p['linear_probe_s']:.1f} s; "
            f"k-NN {p['test_features']:,} x {p['train_features']:,}: {p['knn_s']:.1f} s.\n"
        )
    return "\n".join(parts)


def write_report(report: SpeedReport, out: Path) -> None:
    from minr.io import atomic_write_text, write_json

    write_json(out / "speed.json", asdict(report))
    atomic_write_text(out / "speed.md", markdown(report))


def update_readme(readme: Path, table: str, marker: str = "speed") -> None:
    """Replace the text between `<!-- speed:start -->` and `<!-- speed:end -->` in the README with `table`."""
    from minr.errors import MinrError
    from minr.io import atomic_write_text

    text = readme.read_text()
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        raise MinrError(f"{readme} has no {start} ... {end} section to refresh")
    head, rest = text.split(start, 1)
    atomic_write_text(readme, head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
