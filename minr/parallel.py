"""Work spread over the processes of a `torchrun` job: DDP for training steps (batch norm over the global batch),
and evaluation sharded across ranks and gathered back in order, so a result does not depend on the world size.

    net = data_parallel(model, env)            # train through `net`, checkpoint `model`
    mine = Subset(data, shard(len(data), env))  # this rank's share
    out = gather_rows(predicted_batches, env)   # every rank: the whole, in the dataset's order
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from minr.runtime import Dist


def data_parallel(model: nn.Module, env: Dist, *, find_unused: bool = False) -> nn.Module:
    """The model to call in a training step: under `torchrun` DDP's wrapper (gradients averaged over the ranks in
    backward) with every batch norm normalising over the global batch, as one process does; else the model.
    `find_unused`: some trainable parameters may take no part in the loss (DDP then looks for them each step)."""
    if env.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    cuda = next(model.parameters()).device.type == "cuda"
    if cuda:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        _global_batch_norm(model)
    ids = [env.local_rank] if cuda else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are those of every rank's batch together, on any device (torch's
    SyncBatchNorm runs on GPUs only): the sums are all-reduced with autograd, so the gradient is the global one."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a batch of at least 2 dimensions, got {x.dim()}")

    @torch.compiler.disable  # collectives inside an autograd Function: left to eager under `train.compile`
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c, dims = x.shape[1], [0, *range(2, x.dim())]
        sums = _SumOverRanks.apply(torch.cat([x.sum(dims), x.new_full((1,), x.numel() / c)]))
        n = sums[-1]
        mean = sums[:c] / n
        shape = (1, c) + (1,) * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims)) / n  # two passes: no cancellation
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class _SumOverRanks(torch.autograd.Function):
    """The sum of a tensor over the ranks, differentiable: every rank's input reaches every rank's output, so
    each input's gradient is the sum of the outputs' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _global_batch_norm(module: nn.Module) -> None:
    """Every batch norm of `module` made a `GlobalBatchNorm` in place, sharing its parameters and buffers (the
    state dict keeps its names and values)."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
            args = (child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new = GlobalBatchNorm(*args)
            for key, value in [*child.named_parameters(recurse=False), *child.named_buffers(recurse=False)]:
                setattr(new, key, value)
            new.train(child.training)
            setattr(module, name, new)
        else:
            _global_batch_norm(child)


def shard(n: int, env: Dist) -> list[int]:
    """This rank's share of `n` items, every world-th from its rank (`gather_rows` puts the shares back)."""
    return list(range(env.rank, n, env.world))


def gather_rows(batches: list[torch.Tensor], env: Dist) -> torch.Tensor:
    """This rank's `shard` of a result, as the batches it computed (possibly none), and every other rank's: whole
    and in the items' order, on every rank (CPU)."""
    part = torch.cat(batches).cpu() if batches else None
    if env.world == 1:
        return part
    parts = _per_rank(part)
    like = next(p for p in parts if p is not None)
    out = torch.empty((sum(len(p) for p in parts if p is not None), *like.shape[1:]), dtype=like.dtype)
    for r, p in enumerate(parts):
        if p is not None:
            out[r :: env.world] = p
    return out


def gather_items(items: list[Any], env: Dist) -> list[Any]:
    """Every rank's `shard` of a list of results, whole and in the items' order, on every rank."""
    if env.world == 1:
        return items
    parts = _per_rank(items)
    out: list[Any] = [None] * sum(len(p) for p in parts)
    for r, p in enumerate(parts):
        out[r :: env.world] = p
    return out


def _per_rank(obj: Any) -> list[Any]:
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast(obj: Any, env: Dist) -> Any:
    """Rank 0's `obj` on every rank (a decision that must be the same everywhere: what is left to compute)."""
    if env.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
