"""Data-parallel training with PyTorch's own engine: torchrun, DDP, synchronised BatchNorm.

Launch with ``torchrun --nproc_per_node=K -m pyro_implicit.inference train ARGS`` (or
``pyro-implicit train`` under torchrun). Every rank builds the same global mini-batch (same data
order, same augmentation) and takes its shard, so K processes see exactly what one process
with the same global batch sees; gradients are averaged by ``DistributedDataParallel``.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, index: torch.Tensor) -> torch.Tensor:
        """This rank's part of a global batch of indices (every world-th item)."""
        return index[self.rank::self.world]

    def any(self, *flags: bool) -> list[bool]:
        """For each flag: true on every rank if true on any rank (one collective when active)."""
        if not self.active:
            return list(flags)
        values = torch.tensor([float(f) for f in flags])
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
        return [bool(v) for v in values.tolist()]


SINGLE = Dist()


def setup(device: str) -> Dist:
    """Join the torchrun job described by the environment, if any (gloo on CPU, nccl on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        # nccl for CUDA tensors, gloo for the small CPU flags and RNG states we also reduce
        backend = "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Dist(dist.get_rank(), dist.get_world_size())


def teardown() -> None:
    """Leave the job: free DDP's reducers first (they hold the process group), then wait for
    every rank, so that no rank closes the group under another."""
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: every rank's input feeds every rank's output."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the whole global batch across ranks.

    Works on CPU (gloo) and GPU alike through a differentiable all-reduce of per-channel sums.
    Statistics are synchronised in training steps only (grad enabled): under ``no_grad``, as in
    BN recalibration, each rank normalises the whole batches it was given, like one process.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.full((1,), x.numel() / x.shape[1], device=x.device, dtype=x.dtype)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), x.square().sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean.square()).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1 / float(
                    self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), m)
        shape = (1, -1, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``module`` (in place) by a SyncBatchNorm2d with its state."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=child.running_mean.device
                                   if child.running_mean is not None else None)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
