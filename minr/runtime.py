"""Where and how a run executes: keyed random streams, the device, the process group, autocast, memory.

Randomness is keyed, not stateful: a stream depends only on (seed, salt, index), so data order, masks and dropout
do not depend on batching, worker count, DDP ranks or on where a run was interrupted.
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from minr.errors import MinrError


# -- keyed random streams -------------------------------------------------------------------------------------
def keyed_generator(seed: int, salt: str, index: int) -> torch.Generator:
    """A generator that depends only on (seed, salt, index): for example one image's mask stream."""
    digest = hashlib.blake2b(f"{seed}/{salt}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of optimiser step `step` on `rank` (dropout, Mixup): the same whether or not the run resumed."""
    return int(keyed_generator(seed, f"step{rank}", step).initial_seed())


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed torch's and numpy's global generators for one optimiser step (timm's Mixup draws from numpy)."""
    s = step_seed(seed, step, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)


def epoch_batches(n: int, batch: int, epoch: int, seed: int) -> list[list[int]]:
    """The epoch's full batches of dataset indices, shuffled by (seed, epoch) alone (the last partial is dropped)."""
    order = torch.randperm(n, generator=keyed_generator(seed, "order", epoch)).tolist()
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


# -- device and process group ---------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise MinrError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; fp32 on CPU (CPU bf16 matmuls are slower than fp32 on most machines)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@dataclass(frozen=True)
class Dist:
    """This process's place in a `torchrun` job (world 1 without one)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()  # one process


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that `torchrun` describes in the environment (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():  # with CUDA, CPU tensors (a gathered result) still have gloo
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean_over_ranks(x: torch.Tensor, env: Dist) -> float:
    if env.world > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
        x /= env.world
    return x.item()


def barrier(env: Dist) -> None:
    if env.world > 1:
        dist.barrier()


def current() -> Dist:
    """This process's place in the process group already joined (world 1 when none is)."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Dist()


def distributed_device(name: str) -> tuple[torch.device, Dist]:
    """The device of `--device NAME` for this process and the process group joined: under `torchrun` each
    process takes its own GPU (LOCAL_RANK)."""
    device = resolve_device(name)
    env = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    return device, env


# -- measurement ----------------------------------------------------------------------------------------------
def peak_memory_mb(device: torch.device) -> float:
    """CUDA: the most memory torch allocated; CPU: the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def hardware() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
