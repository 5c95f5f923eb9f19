"""SWA-Gaussian (Maddox et al. 2019): a Gaussian over every weight from the SGD iterates.

:class:`SWAGGuide` holds the current SGD iterate of every weight site of a model (all of the
network's parameters, as :class:`~pyro_implicit.EnsembleGuide`) as one flat parameter: training
is MAP on it (the guide emits it as Deltas). :meth:`SWAGGuide.collect` adds the iterate to the
running first and second moments (``torch.optim.swa_utils``' SWA average) and its deviation from
the new mean to a ring of the last K deviations. A draw is a seed; its weights are

    w = mean + diag^(1/2) z1 / sqrt(2) + D^T z2 / sqrt(2 (K - 1)),   z1, z2 ~ N(0, I)

with diag = E[w^2] - mean^2 (clamped at 0) and D the K x P deviation matrix (K: the deviations
collected so far, at most ``rank``; the low-rank term needs two). Before the first collection
a draw is the iterate. Every statistic is a buffer, so checkpoints hold them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.optim.swa_utils import get_swa_avg_fn

from .guide import GuideContract
from .model import BayesianNetwork
from .seeds import draw_seed, seeded_generator


class SWAGGuide(GuideContract, PyroModule):
    """q(w) = N(mean, diag/2 + D^T D / (2 (K - 1))) over the sites of ``model``, from the
    iterates passed to :meth:`collect`; ``initial`` gives the iterate's starting values by site
    name (e.g. the network's initial parameters; sites it lacks start at 0)."""

    latent_shape = (1,)

    def __init__(self, model: BayesianNetwork, rank: int = 20,
                 initial: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"the SWAG rank must be >= 1, got {rank}")
        if not model.sites:
            raise ValueError("the model has no weight sites for SWAG to cover")
        initial = initial or {}
        self.site_names = [s.name for s in model.sites]
        self.shapes = [s.shape for s in model.sites]
        start = [initial[s.name].detach().flatten() if s.name in initial else torch.zeros(s.numel)
                 for s in model.sites]
        self.iterate = nn.Parameter(torch.cat(start).clone())
        size = self.iterate.numel()
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("sq_mean", torch.zeros(size))
        self.register_buffer("deviations", torch.zeros(rank, size))
        self.register_buffer("collected", torch.zeros((), dtype=torch.long))
        self._average = get_swa_avg_fn()

    @property
    def rank(self) -> int:
        """K, the most deviations kept."""
        return self.deviations.shape[0]

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split([math.prod(s) for s in self.shapes])
        return {name: part.view(shape)
                for name, part, shape in zip(self.site_names, parts, self.shapes, strict=True)}

    @torch.no_grad()
    def collect(self) -> None:
        """Add the current iterate to the moments and the ring of deviations."""
        w, n = self.iterate.detach(), self.collected
        self.mean.copy_(self._average(self.mean, w, n))
        self.sq_mean.copy_(self._average(self.sq_mean, w.square(), n))
        self.deviations[int(n) % self.rank].copy_(w - self.mean)
        self.collected += 1

    def variance(self) -> torch.Tensor:
        """The diagonal part diag = E[w^2] - mean^2, clamped at 0 (rounding)."""
        return (self.sq_mean - self.mean.square()).clamp_(min=0)

    def sample_latent(self) -> torch.Tensor:
        return draw_seed()

    def weights(self, seed: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weight sample of ``seed`` (z1, z2 from a generator seeded by it); before any
        collection, the iterate itself."""
        if not int(self.collected):
            return self._split(self.iterate.detach())
        g = seeded_generator(seed, self.mean.device)
        w = self.mean + self.variance().sqrt() * torch.randn(
            self.mean.shape, generator=g, device=self.mean.device) / math.sqrt(2)
        k = min(int(self.collected), self.rank)
        if k > 1:
            z2 = torch.randn(k, generator=g, device=self.mean.device)
            w = w + z2 @ self.deviations[:k] / math.sqrt(2 * (k - 1))
        return self._split(w)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """The current iterate at every site (training is MAP on it)."""
        weights = self._split(self.iterate)
        for name, w in weights.items():
            pyro.sample(name, dist.Delta(w, event_dim=w.dim()))
        return weights
