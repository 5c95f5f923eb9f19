"""The guide contract (:class:`PosteriorGuide`) and the guides that emit the model's weight
sites: the implicit (hypernetwork) guide and a point one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from .hypernet import GENERATORS, check_generator
from .model import BayesianNetwork
from .priors import check_location_scale, check_prior, prior_quantiles, z_prior
from .strategies import group_layers


@runtime_checkable
class PosteriorGuide(Protocol):
    """What every guide of the library offers, and all that training, posterior sampling
    (:func:`~pyro_implicit.freeze_posterior`), evaluation and analysis rely on.

    A posterior sample is kept as its *latent draw* (a hypernetwork's z, a seed, an ensemble
    member's index, a flow's noise), not as its weights: a draw is small, and the weights are
    regenerated from it whenever they are needed, so N samples never hold N weight sets.

    - ``latent_shape``: the shape of one latent draw; it has no element for a point estimate.
    - ``sample_latent()``: the next latent draw: from q, or an ensemble's next member.
    - ``weights(z)``: the values of the model sites the guide fills for draw ``z``, keyed by
      model site name (sites the guide does not fill keep the model's own values).
    - ``is_point``: whether nothing is latent (a point estimate), so a single draw is the whole
      posterior: callers draw once instead of N times, and skip z analyses.
    - ``z_groups``: the names of the hypernetwork's groups of blocks that share one row of z
      (the z-sharing strategy), one per row of a draw; None for guides without z groups.
    - ``guide(*args, **kwargs)``: the guide as a Pyro guide for training, emitting the sites.
    """

    @property
    def latent_shape(self) -> tuple[int, ...]: ...

    def sample_latent(self) -> torch.Tensor: ...

    def weights(self, z: torch.Tensor) -> dict[str, torch.Tensor]: ...

    @property
    def is_point(self) -> bool: ...

    @property
    def z_groups(self) -> Sequence[str] | None: ...

    def __call__(self, *args, **kwargs) -> dict[str, torch.Tensor]: ...


class GuideContract:
    """The members of :class:`PosteriorGuide` that follow from ``latent_shape``, shared by the
    library's guides: ``is_point`` and no z groups (the hypernetwork guide overrides that)."""

    latent_shape: tuple[int, ...]
    z_groups: Sequence[str] | None = None

    @property
    def is_point(self) -> bool:
        """Whether nothing is latent: a point estimate, whose one draw is the whole posterior."""
        return math.prod(self.latent_shape) == 0


class ImplicitGuide(GuideContract, PyroModule):
    """q(w) implicit: sample z ~ p(z) (site ``z``, one row per z group), emit every weight site
    of ``model`` as a Delta at its hypernetwork output g(z; theta).

    p(z) is the named ``prior`` moved to ``z_loc + z_scale * e`` (:mod:`.priors`). ``spread``
    (1 by default; a training schedule may lower it) contracts every draw towards a fixed
    ``anchor`` draw, ``anchor + spread * (z - anchor)``: at 0 the guide is one network.
    """

    def __init__(
        self,
        model: BayesianNetwork,
        strategy: str = "all-in-one",
        prior: str = "normal",
        z_dim: int = 16,
        h_dim: int = 16,
        z_loc: float = 0.0,
        z_scale: float = 1.0,
        anchor_seed: int = 0,
        generator: str = "full",
    ):
        super().__init__()
        if not isinstance(model, BayesianNetwork):
            raise TypeError(f"ImplicitGuide needs the Pyro model, a BayesianNetwork, got "
                            f"{type(model).__name__}: wrap the network first, "
                            f"model = BayesianNetwork(net, num_data)")
        check_location_scale(z_loc, z_scale)
        if not model.sites:
            raise ValueError("the model has no generated weight sites to put a hypernetwork on")
        self.prior = check_prior(prior)
        self.strategy, self.generator = strategy, check_generator(generator)
        self.site_names = [s.name for s in model.sites]
        self.groups, layer_group = group_layers(model.blocks, strategy)
        self.register_buffer("layer_group", torch.tensor(layer_group, dtype=torch.long))
        self.hypernet = GENERATORS[generator]([s.shape for s in model.sites], z_dim, h_dim)
        self.z_loc, self.z_scale, self.spread = float(z_loc), float(z_scale), 1.0
        # from a generator of its own (the global RNG stream is untouched), rebuilt from the
        # seed rather than saved, so state dicts are those of a guide without a schedule
        u = torch.rand(self.latent_shape, generator=torch.Generator().manual_seed(anchor_seed),
                       dtype=torch.float64).clamp_(1e-6, 1 - 1e-6)
        anchor = prior_quantiles(prior, u, self.z_loc, self.z_scale).float()
        self.register_buffer("anchor", anchor, persistent=False)

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Shape of the ``z`` site: (number of z groups, z_dim)."""
        return len(self.groups), self.hypernet.z_dim

    @property
    def z_groups(self) -> list[str]:
        """The z groups (``groups``): one row of z each."""
        return self.groups

    def z_distribution(self) -> dist.Distribution:
        """p(z) over the ``z`` site."""
        return z_prior(self.prior, self.latent_shape, self.layer_group.device, self.z_loc,
                       self.z_scale)

    def sample_latent(self) -> torch.Tensor:
        """One draw of z from p(z), shape ``latent_shape``."""
        return self.z_distribution().sample()

    def layer_z(self, z: torch.Tensor) -> torch.Tensor:
        """The z row each generated layer reads, shape (layers, z_dim)."""
        return z[self.layer_group]

    def weights(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The generated kernels g(z; theta), keyed by site name (z contracted towards the
        anchor while ``spread < 1``)."""
        if self.spread != 1:
            z = self.anchor + self.spread * (z - self.anchor)
        return dict(zip(self.site_names, self.hypernet(self.layer_z(z)), strict=True))

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        z = pyro.sample("z", self.z_distribution(), infer={"is_auxiliary": True})
        weights = self.weights(z)
        for name, w in weights.items():
            pyro.sample(name, dist.Delta(w, event_dim=w.dim()))
        return weights


class PointGuide(GuideContract, PyroModule):
    """The guide of a point estimate (MAP, MLE): nothing latent, every weight a parameter."""

    latent_shape = (0,)

    def sample_latent(self) -> torch.Tensor:
        return torch.empty(0)

    def weights(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {}
