"""The ELBO per datum, as a Pyro loss for the explicit-density baselines (Bayes by Backprop,
Bayesian hypernetworks).

loss = -(1/N) [ E_q log p(y_batch | x_batch, w) * N/B  -  kl_weight * KL(q || p) ]
       + (weight_decay / 2) ||phi_model||^2

with one draw of the guide per mini-batch. KL(q || p) is the sum over the model's latent sites:
analytic where PyTorch registers it (a Normal guide against the Normal prior), else the
single-sample estimate log q(v) - log p(v). Dividing by N puts the ELBO in the scaling in which
the SGD recipe (lr 0.1) applies, as :class:`~pyro_implicit.ImplicitMAP` does; Blundell et al.'s
mini-batch weighting of the KL (1/M per batch of M) is the same thing. ``kl_weight`` is 1 for
the ELBO; below 1 it tempers the posterior (likelihood^(1/T) with T = kl_weight) or anneals the
KL in. The model's ordinary parameters phi (stem, FC, BatchNorm affine, weight-norm directions:
point estimates) keep the Gaussian prior of MAP as weight decay; the guide's parameters are
variational parameters, whose prior is the KL, and get none.

``local_reparam`` applies the local reparameterisation trick (Kingma, Salimans & Welling 2015)
to every conv or linear layer whose weight the guide drew from a Normal: the layer's outputs
are sampled from their Gaussian N(f(x, mu), f(x^2, sigma^2)) with independent noise per output
instead of computing f(x, w) with the drawn w, which lowers the gradient variance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import pyro.poutine as poutine
import torch
from torch.distributions import Independent, Normal, kl_divergence
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .objective import GaussianPrior, data_log_likelihood, unique_parameters

VARIANCE_FLOOR = 1e-8  # keeps sqrt differentiable where a receptive field is all zeros


def normal_parameters(fn) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(loc, scale) of a factorised Normal distribution (possibly ``to_event``), else None."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return (fn.loc, fn.scale) if isinstance(fn, Normal) else None


class LocalReparameterization(TorchFunctionMode):
    """Inside the block, ``F.conv2d`` / ``F.linear`` calls whose weight is one of the registered
    draws return a sample of their Gaussian pre-activations instead of using the draw."""

    LAYERS = (F.conv2d, F.linear)

    def __init__(self, normals: Mapping[int, tuple[torch.Tensor, torch.Tensor]]):
        super().__init__()
        self.normals = dict(normals)  # id(drawn weight) -> (loc, scale)

    @classmethod
    def from_trace(cls, guide_trace) -> LocalReparameterization:
        """Register every sample site of ``guide_trace`` drawn from a factorised Normal."""
        normals = {}
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"]:
                params = normal_parameters(site["fn"])
                if params is not None:
                    normals[id(site["value"])] = params
        return cls(normals)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.LAYERS and len(args) > 1 and id(args[1]) in self.normals:
            loc, scale = self.normals[id(args[1])]
            x, _, *rest = args  # rest: bias (optional), then the layer's own options
            mean = func(x, loc, *rest, **kwargs)
            options = {k: v for k, v in kwargs.items() if k != "bias"}
            var = func(x * x, scale * scale, None, *rest[1:], **options)
            return mean + (var + VARIANCE_FLOOR).sqrt() * standard_normal_like(mean)
        return func(*args, **kwargs)


def standard_normal_like(x: torch.Tensor) -> torch.Tensor:
    """N(0, 1) noise like ``torch.randn_like(x)``, drawn through the fast contiguous kernel.

    ``randn_like`` keeps a channels-last layout (training batches arrive channels-last from the
    random crop), and CPU normal sampling of a non-contiguous tensor falls back to one scalar
    draw at a time: the c10-10k bbb run's epochs took 107 s with it and 51 s without it
    (``benchmarks/results/c10-10k/bbb-s0.json``). ``empty_like`` always
    returns a dense tensor, so its storage is filled as one flat contiguous vector instead.
    """
    noise = torch.empty_like(x)
    noise.as_strided((noise.numel(),), (1,)).normal_()
    return noise


class WeightSpaceELBO(GaussianPrior):
    """Callable Pyro loss ``loss(model, guide, *args, **kwargs) -> Tensor``: the negative ELBO per
    datum plus weight decay on the model's parameters (see the module docstring). Named apart
    from ``pyro.infer.ELBO``, which it is not."""

    def __init__(self, weight_decay: float = 5e-4, kl_weight: float = 1.0,
                 local_reparam: bool = False, decay_in_optimizer: bool = False):
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        self.weight_decay = weight_decay
        self.kl_weight = kl_weight
        self.local_reparam = local_reparam
        self.decay_in_optimizer = decay_in_optimizer

    def decayed_parameters(self, model, guide) -> list[torch.nn.Parameter]:
        """The model's point parameters only: the guide's are variational (their prior is
        the KL)."""
        return unique_parameters(model)

    def traces(self, model, guide, *args, **kwargs):
        """One guide draw and the model replayed on it (locally reparameterised if asked)."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        layers = (LocalReparameterization.from_trace(guide_trace) if self.local_reparam
                  else contextlib.nullcontext())
        with layers:
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs)
        return guide_trace, model_trace

    @staticmethod
    def kl(guide_trace, model_trace) -> torch.Tensor:
        """KL(q || p) summed over the model's latent sites that the guide samples."""
        total = torch.zeros(())
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or name not in guide_trace.nodes:
                continue
            q, p = guide_trace.nodes[name]["fn"], site["fn"]
            try:
                term = kl_divergence(q, p)
            except NotImplementedError:
                value = site["value"]
                term = q.log_prob(value) - p.log_prob(value)
            total = total.to(term.device) + term.sum() * site["scale"]
        return total

    def loss_and_logits(self, model, guide, *args, likelihood_weight: float = 1.0,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The differentiable loss and the model's ``logits`` site (for training accuracy).

        ``likelihood_weight`` multiplies the data term only (data-parallel shards).
        """
        guide_trace, model_trace = self.traces(model, guide, *args, **kwargs)
        log_lik, num_data = data_log_likelihood(model_trace)
        kl = self.kl(guide_trace, model_trace).to(log_lik.device)
        loss = (self.kl_weight * kl - likelihood_weight * log_lik) / num_data
        prior = self.prior_term(model, guide, loss.device)
        self._record(data=-likelihood_weight * log_lik.detach() / num_data,
                     kl=self.kl_weight * kl.detach() / num_data, prior=prior)
        return loss + prior, model_trace.nodes["logits"]["value"]

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.loss_and_logits(model, guide, *args, **kwargs)[0]

    __call__ = differentiable_loss
