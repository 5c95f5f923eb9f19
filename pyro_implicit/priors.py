"""Priors p(z) for the hypernetworks' input noise, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch

PriorFactory = Callable[[torch.Tensor, torch.Tensor], dist.Distribution]

# Each factory takes (zero, one) tensors on the target device and returns a scalar distribution.
PRIORS: dict[str, PriorFactory] = {
    "normal": lambda zero, one: dist.Normal(zero, one),
    "uniform": lambda zero, one: dist.Uniform(-one, one),
    "uniform01": lambda zero, one: dist.Uniform(zero, one),
    "halfnormal": lambda zero, one: dist.HalfNormal(one),
}
PRIOR_DESCRIPTIONS = {
    "normal": "N(0, 1)",
    "uniform": "U(-1, 1)",
    "uniform01": "U(0, 1)",
    "halfnormal": "|N(0, 1)|",
}


def check_prior(name: str) -> str:
    """Return ``name`` if it names a prior, else raise a ValueError listing the choices."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of: {', '.join(PRIORS)}")
    return name


def z_prior(name: str, shape: tuple[int, ...], device: torch.device | str | None = None):
    """The prior ``name`` over a z tensor of ``shape``, as one event (``to_event(len(shape))``)."""
    check_prior(name)
    zero = torch.zeros((), device=device)
    return PRIORS[name](zero, zero + 1).expand(shape).to_event(len(shape))
