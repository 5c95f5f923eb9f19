"""Bayesian hypernetworks (Krueger et al. 2017) in Pyro: a normalizing flow over weight-norm scales.

The model :class:`WeightNormNetwork` reparameterises every generated kernel by weight
normalisation, ``w = g * v / ||v||`` per output channel (Salimans & Kingma 2016). Its only latent
site is ``scales``: the per-channel scales g of all generated layers, concatenated, with prior
N(0, 1) (Krueger et al.'s code: a zero-mean Gaussian with precision ``lbda = 1``). The directions
v are point-estimated parameters of the model, like the stem, FC and BatchNorm parameters.

The guide :class:`ScaleFlow` is the Bayesian hypernetwork: Gaussian noise eps ~ N(0, I) through a
real-NVP flow (Dinh et al. 2017) of Pyro affine coupling layers, the halves swapped in between,
and a learnable elementwise affine map gives g (Krueger et al. put the elementwise map first;
last, it keeps g in the layout of the scales whatever the swaps). The couplings start at the
identity and the affine map at g0 = ||v|| (the norms of the initial kernels) with std
``init_scale``, so q(g) starts as N(g0, init_scale^2) around the point network's
initialisation. Train with :class:`~pyro_implicit.elbo.WeightSpaceELBO` (its KL is the
single-sample log q(g) - log p(g)). A posterior sample is kept as its noise eps (latent shape (D,)).
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import attrgetter

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineCoupling, AffineTransform, Permute
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import DenseNN, PyroModule
from torch import nn
from torch.nn import functional as F

from .bbb import inverse_softplus
from .guide import GuideContract
from .model import BayesianNetwork, WeightSite

SCALES = "scales"


class WeightNormNetwork(BayesianNetwork):
    """p(y | x, w(g, v)) p(g) with weight-normalised generated kernels; latent site ``scales``.

    ``kernel_sites`` are the generated kernels (as ``BayesianNetwork.sites`` would be); ``sites``
    holds the one latent site; ``network_tensors`` turns scales into kernels.
    """

    def __init__(self, net: nn.Module, num_data: int,
                 generated: Mapping[str, list[str]] | None = None, prior_scale: float = 1.0):
        initial = {name: p.detach().clone() for name, p in net.named_parameters()}
        super().__init__(net, num_data, generated)
        if not self.sites:
            raise ValueError("the network has no generated kernels to weight-normalise")
        self.kernel_sites = self.sites
        channels = sum(site.shape[0] for site in self.kernel_sites)
        self.sites = [WeightSite(SCALES, (channels,), SCALES)]
        self.prior_scale = prior_scale
        self.directions = PyroModule()
        for site in self.kernel_sites:
            deep_setattr(self.directions, site.name, nn.Parameter(initial[site.name]))

    def direction(self, name: str) -> torch.Tensor:
        """The direction parameter v of kernel ``name``."""
        return attrgetter(name)(self.directions)

    def initial_scales(self) -> torch.Tensor:
        """The scales ||v|| per output channel, for which the kernels equal the directions."""
        return torch.cat([self.direction(s.name).detach().flatten(1).norm(dim=1)
                          for s in self.kernel_sites])

    def weight_prior(self, site: WeightSite, device: torch.device) -> dist.Distribution:
        """p(g) = N(0, prior_scale^2) for every scale."""
        return dist.Normal(torch.zeros((), device=device),
                           torch.full((), self.prior_scale, device=device)).expand(
            site.shape).to_event(1)

    def network_tensors(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Replace ``scales`` by the kernels w = g * v / ||v||."""
        tensors = dict(tensors)
        scales = tensors.pop(SCALES).split([s.shape[0] for s in self.kernel_sites])
        for site, g in zip(self.kernel_sites, scales, strict=True):
            v = self.direction(site.name)
            norm = v.flatten(1).norm(dim=1)
            tensors[site.name] = v * (g / norm).view(-1, *[1] * (v.dim() - 1))
        return tensors


class BoundedCouplingNet(DenseNN):
    """A coupling's conditioner whose log-scale output is bounded smoothly, ``B tanh(s / B)``
    (Dinh et al. 2017 bound theirs with tanh), so its gradient vanishes as it saturates.

    Pyro's :class:`~pyro.distributions.transforms.AffineCoupling` clamps the log-scale to
    [-5, 3] but passes the gradient through the clamp: the KL's entropy term then keeps pushing
    a clamped log-scale outwards, the conditioner's weights grow without bound, and the flow
    overflows (the c10-10k run diverged at global step 321: ``docs/methods.md``). ``bound`` 0
    leaves the log-scale to Pyro's clamp.
    """

    def __init__(self, dim: int, hidden: int, bound: float):
        split = dim // 2
        super().__init__(split, [hidden], param_dims=[dim - split, dim - split])
        self.bound = bound

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = super().forward(x)
        if self.bound:
            log_scale = self.bound * torch.tanh(log_scale / self.bound)
        return mean, log_scale


class ScaleFlow(GuideContract, PyroModule):
    """q(g): N(0, I) noise through ``layers`` affine couplings (hidden width ``hidden``, log-scales
    bounded by ``scale_bound``: :class:`BoundedCouplingNet`) and an elementwise affine map,
    sampled at the model's ``scales`` site."""

    def __init__(self, model: WeightNormNetwork, layers: int = 4, hidden: int = 64,
                 init_scale: float = 0.01, scale_bound: float = 2.0):
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ValueError(f"the flow needs layers >= 1 and hidden >= 1, got {layers}, {hidden}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if not 0 <= scale_bound <= 3:  # Pyro's clamp stops log-scales at 3 anyway
            raise ValueError(f"scale_bound must be in [0, 3] (0: Pyro's clamp), got {scale_bound}")
        dim = model.sites[0].shape[0]
        self.loc = nn.Parameter(model.initial_scales())
        self.rho = nn.Parameter(torch.full((dim,), inverse_softplus(init_scale)))
        self.couplings = nn.ModuleList(
            AffineCoupling(dim // 2, BoundedCouplingNet(dim, hidden, scale_bound))
            for _ in range(layers))
        for coupling in self.couplings:  # start at the identity
            nn.init.zeros_(coupling.nn.layers[-1].weight)
            nn.init.zeros_(coupling.nn.layers[-1].bias)
        self.register_buffer("reverse", torch.arange(dim - 1, -1, -1))

    @property
    def latent_shape(self) -> tuple[int]:
        return (self.loc.shape[0],)

    def transforms(self) -> list:
        """eps -> g: the couplings with the halves swapped in between, then the affine map."""
        out = []
        for i, coupling in enumerate(self.couplings):
            if i:
                out.append(Permute(self.reverse))
            out.append(coupling)
        return [*out, AffineTransform(self.loc, F.softplus(self.rho), event_dim=1)]

    def distribution(self) -> dist.TransformedDistribution:
        base = dist.Normal(torch.zeros_like(self.loc), 1.0).to_event(1)
        return dist.TransformedDistribution(base, self.transforms())

    def sample_latent(self) -> torch.Tensor:
        """Base noise eps ~ N(0, I)."""
        return torch.randn(self.latent_shape, device=self.loc.device)

    def weights(self, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's latent value for noise ``eps``: {"scales": g}."""
        g = eps.to(self.loc.device)
        for transform in self.transforms():
            g = transform(g)
        return {SCALES: g}

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {SCALES: pyro.sample(SCALES, self.distribution())}
