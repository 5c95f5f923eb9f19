"""BatchNorm recalibration: exact running statistics for one fixed weight sample."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .model import batchnorm_layers


class _Moments:
    """Streaming per-channel mean / sum of squared deviations in float64 (Chan et al.)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, None, None

    def update(self, x: torch.Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        var_b, mean_b = torch.var_mean(x.detach(), dim=dims, correction=0)
        mean_b, m2_b = mean_b.double(), var_b.double() * n
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean_b, m2_b
            return
        total = self.count + n
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2_b + delta.square() * (self.count * n / total)
        self.count = total


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
        mom = moments[name]
        bn.running_mean.copy_(mom.mean)
        bn.running_var.copy_(mom.m2 / max(mom.count - 1, 1))
        bn.num_batches_tracked.fill_(seen)
        stats[f"{name}.running_mean"] = bn.running_mean.clone()
        stats[f"{name}.running_var"] = bn.running_var.clone()
    return stats
