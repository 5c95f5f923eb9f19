"""BatchNorm recalibration: exact running statistics for one fixed weight sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
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

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance over everything seen."""
        m1 = self.s1 / self.count
        var = (self.s2 / self.count - m1.square()) * (self.count / max(self.count - 1, 1))
        return self.shift.double() + m1, var.clamp_min(0)


@torch.no_grad()
def recalibrate_bn(
    module: nn.Module,
    batches: Iterable[torch.Tensor],
    forward: Callable[[torch.Tensor], object] | None = None,
    num_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Re-estimate every BN layer's running mean/variance of ``module`` from training batches.

    Runs ``forward(x)`` (default ``module(x)``) on the first ``num_batches`` batches (all when
    None) with BN normalising by batch statistics, as in training, and everything else (e.g.
    dropout) in eval mode. The running mean/var become the exact mean and unbiased variance of
    each BN input over all those batches (not an exponential average). Returns them by buffer
    name; the module's mode is restored afterwards.
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
    seen = 0
    try:
        for seen, x in enumerate(batches, start=1):
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
        mean, var = moments[name].mean_var()
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        bn.num_batches_tracked.fill_(seen)
        stats[f"{name}.running_mean"] = bn.running_mean.clone()
        stats[f"{name}.running_var"] = bn.running_var.clone()
    return stats
