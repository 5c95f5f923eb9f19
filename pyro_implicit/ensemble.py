"""Deep ensembles as a posterior: M point estimates, equally weighted.

:class:`EnsembleGuide` holds M members' values of every weight site of a model (one flat buffer
per member); the latent of a draw is a member index, and successive draws cycle through the
members (draw i is member i mod M), so averaging N = kM draws averages every member k times:
exactly the ensemble average, whatever k. Members are trained elsewhere (independently) and put
in with :meth:`EnsembleGuide.load_members`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from .guide import GuideContract
from .model import BayesianNetwork


class EnsembleGuide(GuideContract, PyroModule):
    """q(w) = (1/M) sum_m delta(w - w_m) over the sites of ``model``."""

    latent_shape = (1,)

    def __init__(self, model: BayesianNetwork, members: int):
        super().__init__()
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        if not model.sites:
            raise ValueError("the model has no weight sites for the members to fill")
        self.site_names = [s.name for s in model.sites]
        self.shapes = [s.shape for s in model.sites]
        self.register_buffer("members", torch.zeros(members, sum(s.numel for s in model.sites)))
        self.draws = 0  # draws so far: the next draw is member draws % M

    @property
    def num_members(self) -> int:
        return self.members.shape[0]

    def load_members(self, members: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Set the members from their weights (site name -> tensor, e.g. a net's parameters)."""
        if len(members) != self.num_members:
            raise ValueError(f"{len(members)} members given for an ensemble of "
                             f"{self.num_members}")
        for row, weights in zip(self.members, members, strict=True):
            row.copy_(torch.cat([weights[name].detach().flatten() for name in self.site_names]))

    def sample_latent(self) -> torch.Tensor:
        """The next member index, cycling through 0, 1, ..., M-1, 0, ..."""
        member, self.draws = self.draws % self.num_members, self.draws + 1
        return torch.tensor([member])

    def weights(self, member: torch.Tensor) -> dict[str, torch.Tensor]:
        """Member ``member``'s weights, keyed by site name."""
        flat = self.members[int(member)].split([math.prod(s) for s in self.shapes])
        return {name: part.view(shape)
                for name, part, shape in zip(self.site_names, flat, self.shapes, strict=True)}

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        member = self.sample_latent()
        pyro.sample("member", dist.Delta(member, event_dim=1), infer={"is_auxiliary": True})
        weights = self.weights(member)
        for name, w in weights.items():
            pyro.sample(name, dist.Delta(w, event_dim=w.dim()))
        return weights
