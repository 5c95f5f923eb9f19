"""Last-layer Laplace (Daxberger et al. 2021) as a guide: a Gaussian over a trained network's
final linear layer, fitted post hoc with laplace-torch.

:meth:`LastLayerLaplace.fit` runs ``laplace.Laplace(net, "classification",
subset_of_weights="last_layer", hessian_structure="kron")`` on a trained network, tunes the
prior precision by the marginal likelihood, and keeps what prediction needs as buffers (so a
checkpoint holds it): the MAP mean of the layer and, per parameter (weight, bias), the
eigendecomposition of its Kronecker factors and its prior precision, i.e. laplace-torch's
``posterior_precision`` (a ``KronDecomposed``). Unfitted, the posterior is N(initial weights, I).

A draw is a seed; ``weights(seed)`` samples the layer, ``mean + P^(-1/2) eps`` (as
laplace-torch's ``sample``). :meth:`LastLayerLaplace.predictive_probs` is the GLM predictive
with the probit approximation, softmax(f / sqrt(1 + pi/8 diag(J P^-1 J^T))), in closed form for
a linear layer (no Jacobians are built).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.utils.data import DataLoader

from .guide import GuideContract
from .model import BayesianNetwork
from .seeds import draw_seed, seeded_generator


def last_linear(net: nn.Module) -> str:
    """The name of the last ``nn.Linear`` of ``net`` (registration order): its output layer."""
    names = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer for a last-layer Laplace")
    return names[-1]


class LastLayerLaplace(GuideContract, PyroModule):
    """q(w) = N(mean, P^-1) over the sites of ``model``: one linear layer's weight (C, D) and
    optionally its bias (C,), P Kronecker-factored per parameter, from :meth:`fit`.
    ``initial`` gives the mean until then, by site name (sites it lacks start at 0)."""

    latent_shape = (1,)

    def __init__(self, model: BayesianNetwork,
                 initial: Mapping[str, torch.Tensor] | None = None):
        super().__init__()
        names = [s.name for s in model.sites]
        self.layer = names[0].rpartition(".")[0] if names else ""
        if names not in ([f"{self.layer}.weight"], [f"{self.layer}.weight", f"{self.layer}.bias"]):
            raise ValueError("LastLayerLaplace needs a model whose sites are one linear layer's "
                             "weight (and bias), e.g. generated={'fc': ['fc.weight', 'fc.bias']}; "
                             f"got {names}")
        initial = initial or {}
        self.site_names, self.shapes = names, [s.shape for s in model.sites]
        self.register_buffer("mean", torch.cat([
            initial[s.name].detach().flatten() if s.name in initial else torch.zeros(s.numel)
            for s in model.sites]).clone())
        for i, shape in enumerate(self.shapes):  # factor j of parameter i: eigenvectors, values
            for j, size in enumerate(shape):
                self.register_buffer(f"vectors_{i}_{j}", torch.eye(size))
                self.register_buffer(f"values_{i}_{j}", torch.zeros(size))
        self.register_buffer("prior_precision", torch.ones(len(self.shapes)))

    def _factors(self, i: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Parameter ``i``'s eigenvectors and eigenvalues, one per factor."""
        sizes = range(len(self.shapes[i]))
        return ([getattr(self, f"vectors_{i}_{j}") for j in sizes],
                [getattr(self, f"values_{i}_{j}") for j in sizes])

    @torch.no_grad()
    def fit(self, net: nn.Module, loader: DataLoader) -> None:
        """Fit to the trained ``net`` (a plain network holding this layer) on ``loader``'s
        (x, y) batches: KFAC GGN of the layer, prior precision by marginal likelihood."""
        from laplace import Laplace

        with torch.enable_grad():
            la = Laplace(net, "classification", subset_of_weights="last_layer",
                         hessian_structure="kron", last_layer_name=self.layer)
            la.fit(loader)
            la.optimize_prior_precision(method="marglik", pred_type="glm",
                                        link_approx="probit")
        precision = la.posterior_precision
        self.mean.copy_(la.mean.detach())
        for i in range(len(self.shapes)):
            for j, (q, value) in enumerate(zip(precision.eigenvectors[i],
                                               precision.eigenvalues[i], strict=True)):
                getattr(self, f"vectors_{i}_{j}").copy_(q)
                getattr(self, f"values_{i}_{j}").copy_(value)
        self.prior_precision.copy_(precision.deltas.detach())

    def precision(self):
        """The posterior precision P as laplace-torch's ``KronDecomposed``."""
        from laplace.utils.matrix import KronDecomposed

        vectors, values = zip(*(self._factors(i) for i in range(len(self.shapes))), strict=True)
        return KronDecomposed(list(vectors), list(values), self.prior_precision)

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = flat.split([math.prod(s) for s in self.shapes])
        return {name: part.view(shape)
                for name, part, shape in zip(self.site_names, parts, self.shapes, strict=True)}

    def sample_latent(self) -> torch.Tensor:
        return draw_seed()

    def weights(self, seed: torch.Tensor) -> dict[str, torch.Tensor]:
        """The layer's sample of ``seed``: mean + P^(-1/2) eps, eps from a generator seeded by
        it."""
        eps = torch.randn(self.mean.shape, generator=seeded_generator(seed, self.mean.device),
                          device=self.mean.device)
        return self._split(self.mean + self.precision().bmm(eps, exponent=-0.5))

    def logit_covariance(self, features: torch.Tensor) -> torch.Tensor:
        """J P^-1 J^T per input, (batch, C, C), for the layer's inputs ``features`` (batch, D):
        with P's factors Q1 (C), Q2 (D) per parameter, J (Q1 x Q2) = Q1 x (phi^T Q2)."""
        q1, l1 = (m[0] for m in self._factors(0))
        q2, l2 = (m[1] for m in self._factors(0))
        s = ((features @ q2).square()[:, None, :]
             / (torch.outer(l1, l2) + self.prior_precision[0])).sum(-1)
        covariance = torch.einsum("ci,bi,di->bcd", q1, s, q1)
        if len(self.shapes) == 2:  # the bias: J = I
            (qb,), (lb,) = self._factors(1)
            covariance = covariance + (qb / (lb + self.prior_precision[1])) @ qb.T
        return covariance

    @torch.no_grad()
    def predictive_probs(self, model: BayesianNetwork, x: torch.Tensor,
                         bn_stats: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The GLM predictive's class probabilities on ``x`` (batch, C), probit-approximated:
        softmax(f_MAP / sqrt(1 + pi/8 diag(J P^-1 J^T))). BN uses ``bn_stats`` (by model
        site, e.g. one frozen sample's recalibrated ones) when given, else the model's."""
        captured = []
        hook = model.net.get_submodule(self.layer).register_forward_pre_hook(
            lambda module, inputs: captured.append(inputs[0]))
        try:
            logits = model.logits(x, {**self._split(self.mean), **(bn_stats or {})}).float()
        finally:
            hook.remove()
        variance = self.logit_covariance(captured[0].flatten(1).float()).diagonal(dim1=1, dim2=2)
        return torch.softmax(logits / torch.sqrt(1 + math.pi / 8 * variance), dim=-1)

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """One draw of the layer at its sites."""
        weights = self.weights(self.sample_latent())
        for name, w in weights.items():
            pyro.sample(name, dist.Delta(w, event_dim=w.dim()))
        return weights
