"""BatchNorm recalibration: exact running statistics for one fixed weight sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from .model import batchnorm_layers


class _Moments:
    """Streaming per-channel sums of (x - shift) and (x - shift)^2, accumulated in float64.

    The shift is the first batch's mean, so E[d^2] - E[d]^2 does not cancel catastrophically.
    """

    def __init__(self) -> None:
        self.count, self.shift, self.s1, self.s2 = 0, None, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        dims = [d for d in range(x.dim()) if d != 1]
        shape = [-1 if d == 1 else 1 for d in range(x.dim())]
        if self.shift is None:
            self.shift = x.mean(dims)
        d = x - self.shift.view(shape)
        self.s1 = self.s1 + d.sum(dims).double()
        self.s2 = self.s2 + d.square().sum(dims).double()
        self.count += x.numel() // x.shape[1]

    def summary(self, channels: int, device) -> torch.Tensor:
        """(count, mean, sum of squared deviations) per channel, as one (3, C) float64 tensor."""
        if self.count == 0:
            return torch.zeros(3, channels, dtype=torch.float64, device=device)
        m1 = self.s1 / self.count
        m2 = (self.s2 - self.count * m1.square()).clamp_min(0)
        count = torch.full_like(m1, float(self.count))
        return torch.stack([count, self.shift.double() + m1, m2])


def _combine(parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance from per-rank (count, mean, M2) rows (Chan et al.)."""
    count, mean, m2 = parts[0][0], parts[0][1], parts[0][2]
    for n_b, mean_b, m2_b in parts[1:]:
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total.clamp_min(1))
        m2 = m2 + m2_b + delta.square() * (count * n_b / total.clamp_min(1))
        count = total
    return mean, m2 / (count - 1).clamp_min(1)


@torch.no_grad()
def recalibrate_bn(
    module: nn.Module,
    batches: Iterable[torch.Tensor],
    forward: Callable[[torch.Tensor], object] | None = None,
    num_batches: int | None = None,
    distributed: bool = False,
) -> dict[str, torch.Tensor]:
    """Re-estimate every BN layer's running mean/variance of ``module`` from training batches.

    Runs ``forward(x)`` (default ``module(x)``) on the first ``num_batches`` batches (all when
    None) with BN normalising by batch statistics, as in training, and everything else (e.g.
    dropout) in eval mode. The running mean/var become the exact mean and unbiased variance of
    each BN input over all those batches (not an exponential average). Returns them by buffer
    name; the module's mode is restored afterwards. With ``distributed`` (and an initialised
    process group) rank r forwards batches r, r + world, ... and the moments are combined
    across ranks: every rank ends with the statistics of one process doing all batches.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be >= 1 or None (one full pass), got {num_batches}")
    forward = module if forward is None else forward
    layers = batchnorm_layers(module)
    moments = {name: _Moments() for name, _ in layers}
    hooks = [bn.register_forward_pre_hook(lambda _m, inp, s=moments[name]: s.update(inp[0]))
             for name, bn in layers]
    was_training = {m: m.training for m in module.modules()}
    module.eval()
    for _, bn in layers:
        bn.train()
    rank, world = 0, 1
    if distributed and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    seen = 0
    try:
        for seen, x in enumerate(batches, start=1):
            if (seen - 1) % world == rank:
                forward(x)
            if num_batches is not None and seen >= num_batches:
                break
    finally:
        for h in hooks:
            h.remove()
        for m, mode in was_training.items():
            m.training = mode
    if seen == 0:
        raise ValueError("BN recalibration got no batches")
    stats: dict[str, torch.Tensor] = {}
    for name, bn in layers:
        parts = moments[name].summary(bn.num_features, bn.running_mean.device)
        if world > 1:
            gathered = [torch.empty_like(parts) for _ in range(world)]
            dist.all_gather(gathered, parts)
            parts = torch.stack(gathered)
        else:
            parts = parts[None]
        mean, var = _combine(parts)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.fill_(seen)
        stats[f"{name}.running_mean"] = bn.running_mean.clone()
        stats[f"{name}.running_var"] = bn.running_var.clone()
    return stats
