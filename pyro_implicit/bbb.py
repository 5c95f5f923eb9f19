"""Bayes by Backprop (Blundell et al. 2015): a factorised Gaussian guide over the weight sites.

:class:`MeanFieldNormal` is Pyro's ``AutoNormal`` for a :class:`BayesianNetwork`, with two
differences that matter for CNNs: it samples a ``Normal`` at each weight site itself (not a Delta
behind an auxiliary Normal), so :class:`~pyro_implicit.elbo.WeightSpaceELBO` gets the KL against
the model's Gaussian prior analytically and its local reparameterisation can see the Normal; and
it is built eagerly from the model's sites, its means initialised like the point network's
weights and its scales ``softplus(rho)`` at a small ``init_scale``. Train it with
``WeightSpaceELBO``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from operator import attrgetter

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from .guide import GuideContract
from .model import BayesianNetwork
from .seeds import draw_seed, seeded_generator


def inverse_softplus(value: float) -> float:
    """rho with softplus(rho) = ``value``."""
    return math.log(math.expm1(value))


class MeanFieldNormal(GuideContract, PyroModule):
    """q(w) = prod_i N(w_i; mu_i, softplus(rho_i)^2) over every weight site of ``model``.

    ``init_loc`` maps site names to initial means (e.g. the point network's initial weights);
    sites it lacks start at a draw from the model's prior. Parameters are ``locs.<site>`` and
    ``rhos.<site>``. A posterior sample is kept as a seed (latent shape (1,)): ``weights(seed)``
    regenerates the same weights.
    """

    latent_shape = (1,)

    def __init__(self, model: BayesianNetwork, init_loc: Mapping[str, torch.Tensor] | None = None,
                 init_scale: float = 0.01):
        super().__init__()
        if not model.sites:
            raise ValueError("the model has no weight sites to put a Gaussian posterior on")
        if not (math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"init_scale must be a finite number > 0, got {init_scale}")
        init_loc = init_loc or {}
        self.site_names = [s.name for s in model.sites]
        self.locs = PyroModule()
        self.rhos = PyroModule()
        rho = inverse_softplus(init_scale)
        for site in model.sites:
            loc = init_loc.get(site.name)
            if loc is None:
                loc = model.weight_prior(site, torch.device("cpu")).sample()
            deep_setattr(self.locs, site.name, nn.Parameter(loc.detach().clone()))
            deep_setattr(self.rhos, site.name, nn.Parameter(torch.full_like(loc, rho)))

    def loc_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of site ``name``."""
        return attrgetter(name)(self.locs), F.softplus(attrgetter(name)(self.rhos))

    def sample_latent(self) -> torch.Tensor:
        return draw_seed()

    def weights(self, seed: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weight sample of ``seed``: mu + sigma * eps, eps from a generator seeded by it."""
        out = {}
        generator = seeded_generator(seed, next(self.parameters()).device)
        for name in self.site_names:
            loc, scale = self.loc_scale(name)
            eps = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
            out[name] = loc + scale * eps
        return out

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.site_names:
            loc, scale = self.loc_scale(name)
            out[name] = pyro.sample(name, dist.Normal(loc, scale).to_event(loc.dim()))
        return out
