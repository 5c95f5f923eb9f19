"""Priors p(z) for the hypernetworks' input noise, chosen by name, optionally moved and scaled.

``z_prior(name, shape, loc=mu, scale=s)`` is the law of ``mu + s * e`` for ``e`` drawn from the
named prior: N(mu, s^2) from ``normal``, U(mu - s, mu + s) from ``uniform`` and so on. The
hypernetworks are positively homogeneous (``g(c z) = c g(z)`` for ``c > 0``, no biases) and
every generated conv is followed by BatchNorm, so only z's direction matters: a scale alone
changes nothing, while the ratio ``s / mu`` moves p(z) between near-copies (``mu`` large:
every draw in one cone) and diversity (``mu = 0``: draws of every sign).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro.distributions as dist
import torch

PriorFactory = Callable[[torch.Tensor, torch.Tensor], dist.Distribution]


class Corners(dist.Bernoulli):
    """Bernoulli(1/2) on {0, 1} with a quantile function: z on the corners of the unit cube,
    each draw switching on a random half of the hypernetworks' input columns (in the spirit of
    Wortsman et al. (2021), whose subspaces are most diverse at their vertices)."""

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        return (value > 1 - self.probs).to(value.dtype)


# Each factory takes (zero, one) tensors on the target device and returns a scalar distribution.
PRIORS: dict[str, PriorFactory] = {
    "normal": lambda zero, one: dist.Normal(zero, one),
    "uniform": lambda zero, one: dist.Uniform(-one, one),
    "uniform01": lambda zero, one: dist.Uniform(zero, one),
    "halfnormal": lambda zero, one: dist.HalfNormal(one),
    "bernoulli": lambda zero, one: Corners(probs=one / 2),
}
PRIOR_DESCRIPTIONS = {
    "normal": "N(0, 1)",
    "uniform": "U(-1, 1)",
    "uniform01": "U(0, 1)",
    "halfnormal": "|N(0, 1)|",
    "bernoulli": "Bernoulli(1/2) on {0, 1}",
}


def check_prior(name: str) -> str:
    """Return ``name`` if it names a prior, else raise a ValueError listing the choices."""
    if name not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of: {', '.join(PRIORS)}")
    return name


def check_location_scale(loc: float, scale: float) -> None:
    """Raise a ValueError unless ``loc`` is finite and ``scale`` finite and positive."""
    if not isinstance(loc, (int, float)) or not math.isfinite(loc):
        raise ValueError(f"z_loc must be a finite number, got {loc!r}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"z_scale must be a finite number > 0, got {scale!r}")


def scalar_prior(name: str, device: torch.device | str | None = None, loc: float = 0.0,
                 scale: float = 1.0) -> dist.Distribution:
    """The named prior of one z coordinate, moved to ``loc + scale * e``."""
    check_prior(name)
    check_location_scale(loc, scale)
    zero = torch.zeros((), device=device)
    base = PRIORS[name](zero, zero + 1)
    if loc == 0 and scale == 1:
        return base
    return dist.TransformedDistribution(
        base, [dist.transforms.AffineTransform(zero + loc, zero + scale)])


def z_prior(name: str, shape: tuple[int, ...], device: torch.device | str | None = None,
            loc: float = 0.0, scale: float = 1.0) -> dist.Distribution:
    """The prior ``name`` (moved to ``loc + scale * e``) over a z tensor of ``shape``, as one
    event (``to_event(len(shape))``)."""
    return scalar_prior(name, device, loc, scale).expand(shape).to_event(len(shape))


def prior_quantiles(name: str, u: torch.Tensor, loc: float = 0.0,
                    scale: float = 1.0) -> torch.Tensor:
    """z at the quantiles ``u`` in (0, 1) of each coordinate: a draw of p(z) made from uniform
    numbers of one's own generator (the global RNG stream stays untouched)."""
    base = PRIORS[check_prior(name)](torch.zeros((), dtype=u.dtype), torch.ones((), dtype=u.dtype))
    return loc + scale * base.icdf(u)
