"""Priors p(z) for the hypernetworks' input noise, chosen by name, optionally moved and scaled.

``z_prior(name, shape, loc=mu, scale=s)`` is the law of ``mu + s * e`` for ``e`` drawn from the
named prior: N(mu, s^2) from ``normal``, U(mu - s, mu + s) from ``uniform`` and so on. The
hypernetworks are positively homogeneous (``g(c z) = c g(z)`` for ``c > 0``, no biases) and
every generated conv is followed by BatchNorm, so only z's direction matters: a scale alone
changes nothing, while the ratio ``s / mu`` moves p(z) between near-copies (``mu`` large:
every draw in one cone) and diversity (``mu = 0``: draws of every sign).

Most priors draw z's coordinates independently (``PRIORS``, one scalar law each); a row prior
(``ROW_PRIORS``) is a law of a whole z row, such as ``onehot``'s K = z_dim anchors.
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


class Anchors(dist.OneHotCategorical):
    """z = e_k, k uniform over the z_dim coordinates: K = z_dim anchors, the most diverse
    positive prior (two draws' z are orthogonal or equal), so that one hypernetwork holds an
    ensemble of K kernel sets sharing its output layer. Its quantile function reads the first
    coordinate of uniform numbers of z's shape: k = floor(u[..., 0] * K)."""

    def icdf(self, value: torch.Tensor) -> torch.Tensor:
        k = self.event_shape[-1]
        index = (value[..., :1] * k).long().clamp_(0, k - 1)
        return torch.zeros_like(value).scatter_(-1, index, 1.0)


# Each factory takes (zero, one) tensors on the target device and returns a scalar distribution.
PRIORS: dict[str, PriorFactory] = {
    "normal": lambda zero, one: dist.Normal(zero, one),
    "uniform": lambda zero, one: dist.Uniform(-one, one),
    "uniform01": lambda zero, one: dist.Uniform(zero, one),
    "halfnormal": lambda zero, one: dist.HalfNormal(one),
    "bernoulli": lambda zero, one: Corners(probs=one / 2),
}
# Each factory takes (zero, one, z_dim) and returns a distribution of one z row (event z_dim).
ROW_PRIORS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], dist.Distribution]] = {
    "onehot": lambda zero, one, z_dim: Anchors(probs=(zero + one / z_dim).expand(z_dim)),
}
PRIOR_DESCRIPTIONS = {
    "normal": "N(0, 1)",
    "uniform": "U(-1, 1)",
    "uniform01": "U(0, 1)",
    "halfnormal": "|N(0, 1)|",
    "bernoulli": "Bernoulli(1/2) on {0, 1}",
    "onehot": "one of the z_dim unit vectors e_k, uniformly (K = z_dim anchors)",
}


def check_prior(name: str) -> str:
    """Return ``name`` if it names a prior, else raise a ValueError listing the choices."""
    if name not in PRIOR_DESCRIPTIONS:
        raise ValueError(f"unknown prior {name!r}; choose one of: {', '.join(PRIOR_DESCRIPTIONS)}")
    return name


def check_location_scale(loc: float, scale: float) -> None:
    """Raise a ValueError unless ``loc`` is finite and ``scale`` finite and positive."""
    if not isinstance(loc, (int, float)) or not math.isfinite(loc):
        raise ValueError(f"z_loc must be a finite number, got {loc!r}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"z_scale must be a finite number > 0, got {scale!r}")


def _moved(base: dist.Distribution, loc: float, scale: float,
           zero: torch.Tensor) -> dist.Distribution:
    """``base`` moved to ``loc + scale * e`` (itself when that is the identity); the scale is
    given per coordinate of the event, so that its Jacobian counts every coordinate."""
    if loc == 0 and scale == 1:
        return base
    event = base.event_shape
    return dist.TransformedDistribution(base, [dist.transforms.AffineTransform(
        zero + loc, (zero + scale).expand(event), event_dim=len(event))])


def scalar_prior(name: str, device: torch.device | str | None = None, loc: float = 0.0,
                 scale: float = 1.0) -> dist.Distribution:
    """The named factorised prior of one z coordinate, moved to ``loc + scale * e``."""
    check_prior(name)
    check_location_scale(loc, scale)
    if name in ROW_PRIORS:
        raise ValueError(f"prior {name!r} is a law of a whole z row, not of one coordinate")
    zero = torch.zeros((), device=device)
    return _moved(PRIORS[name](zero, zero + 1), loc, scale, zero)


def z_prior(name: str, shape: tuple[int, ...], device: torch.device | str | None = None,
            loc: float = 0.0, scale: float = 1.0) -> dist.Distribution:
    """The prior ``name`` (moved to ``loc + scale * e``) over a z tensor of ``shape``, as one
    event (``to_event(len(shape))``); a row prior draws each row along the last axis."""
    if name not in ROW_PRIORS:
        return scalar_prior(name, device, loc, scale).expand(shape).to_event(len(shape))
    check_location_scale(loc, scale)
    zero = torch.zeros((), device=device)
    row = ROW_PRIORS[name](zero, zero + 1, shape[-1])
    return _moved(row.expand(shape[:-1]).to_event(len(shape) - 1), loc, scale, zero)


def prior_quantiles(name: str, u: torch.Tensor, loc: float = 0.0,
                    scale: float = 1.0) -> torch.Tensor:
    """z at the quantiles ``u`` in (0, 1) of each coordinate (of each row, for a row prior):
    a draw of p(z) made from uniform numbers of one's own generator (the global RNG stream
    stays untouched)."""
    zero, one = torch.zeros((), dtype=u.dtype), torch.ones((), dtype=u.dtype)
    if check_prior(name) in ROW_PRIORS:
        base = ROW_PRIORS[name](zero, one, u.shape[-1])
    else:
        base = PRIORS[name](zero, one)
    return loc + scale * base.icdf(u)
