"""The paper's objective as a Pyro loss: no ELBO, since the implicit q(w) has no density.

loss = -(1/N) log p(y_batch | x_batch, w = g(z; theta)) * N/B  +  (weight_decay / 2) ||phi||^2

for one z per mini-batch (or K of them, see :class:`ImplicitMAP`), where phi are the parameters
of the model and guide modules (theta and the non-generated network parameters) and never the
generated weights, which are sample sites. This is the negative log joint per datum with a
Gaussian prior N(0, 1 / (N * weight_decay)) on phi: MAP with the paper's weight decay in SGD's
scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pyro.poutine as poutine
import torch
from pyro.distributions import MaskedDistribution
from pyro.poutine.util import site_is_subsample
from torch import nn

from .model import BayesianNetwork, check_site_shape


def unique_parameters(*modules: Callable) -> list[torch.nn.Parameter]:
    """Trainable parameters of ``modules``, each once (what the prior covers and SGD updates)."""
    seen: dict[int, torch.nn.Parameter] = {}
    for module in modules:
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"ImplicitMAP needs the model and guide to be nn.Modules (PyroModules), "
                f"got {type(module).__name__}"
            )
        for p in module.parameters():
            if p.requires_grad:
                seen.setdefault(id(p), p)
    return list(seen.values())


def squared_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of all ``params`` (one fused reduction per tensor)."""
    params = list(params)
    if not params:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm(params)).square().sum()


def data_log_likelihood(model_trace) -> tuple[torch.Tensor, float]:
    """The scaled log-likelihood of a model trace's observed sites (an estimate of
    log p(y_all | x_all, w) from a mini-batch) and the number of data N it stands for."""
    log_lik, num_data = 0.0, 0.0
    for site in model_trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        if site["infer"].get("_deterministic"):
            continue
        log_lik = log_lik + site["fn"].log_prob(site["value"]).sum() * site["scale"]
        num_data = max(num_data, float(site["scale"]) * site["value"].shape[0])
    if num_data == 0:
        raise ValueError("the model has no observed site: pass labels to compute the loss")
    return log_lik, num_data


def observed_site(model_trace) -> dict:
    """The one observed sample site of a model trace (the mixture objective needs per-datum
    log-likelihoods of exactly one)."""
    sites = [site for site in model_trace.nodes.values()
             if site["type"] == "sample" and site["is_observed"]
             and not site["infer"].get("_deterministic")]
    if len(sites) != 1:
        raise ValueError(f"the mixture objective needs one observed site, the model has "
                         f"{len(sites)}: pass labels, or use draws=1 / mode='groups'")
    return sites[0]


def check_guide_values(model, guide_trace) -> None:
    """The shape check of a :class:`BayesianNetwork`'s sites on the guide's values, made before
    the model runs under Pyro's trace (which appends its shape dump to a ValueError)."""
    if not isinstance(model, BayesianNetwork):
        return
    for site in model.sites:
        node = guide_trace.nodes.get(site.name)
        if node is not None:
            check_site_shape(site.name, node["value"], site.shape)


def check_sites_match(guide_trace, model_trace) -> None:
    """Raise one ValueError if the guide samples sites the model lacks, or leaves latent sites
    of the model to their prior (masked-out defaults such as BN statistics aside): a guide
    built for another model."""
    guide_sites = [name for name, site in guide_trace.nodes.items()
                   if site["type"] == "sample" and not site["infer"].get("is_auxiliary")]
    model_sites = {name: site for name, site in model_trace.nodes.items()
                   if site["type"] == "sample" and not site["is_observed"]
                   and not site_is_subsample(site)}
    extra = [name for name in guide_sites if name not in model_sites]
    unfilled = [name for name, site in model_sites.items() if name not in guide_sites
                and not (isinstance(site["fn"], MaskedDistribution) and site["fn"]._mask is False)]
    problems = [f"{what.format(len(names))} ({', '.join(map(repr, names[:3]))}"
                f"{', ...' if len(names) > 3 else ''})"
                for what, names in (("samples {} site(s) the model lacks", extra),
                                    ("leaves {} of the model's site(s) to the prior", unfilled))
                if names]
    if problems:
        raise ValueError(f"the guide does not match the model: it {' and '.join(problems)}; it "
                         f"was built for another model, build it from this one")


def check_latent_guide(guide) -> None:
    """Raise one ValueError unless ``guide`` draws a latent (what repulsion compares)."""
    if not callable(getattr(guide, "sample_latent", None)) or getattr(guide, "is_point", True):
        raise ValueError(f"repulsion needs a guide with a latent draw (a PosteriorGuide that "
                         f"is not a point estimate), got {type(guide).__name__}")


def weight_similarity(guide, guide_trace) -> torch.Tensor:
    """Mean over the weight sites the guide emitted in ``guide_trace`` of cos^2(w, w'), w'
    the sites' values at a fresh draw of the guide's latent (held fixed: no gradient)."""
    check_latent_guide(guide)
    with torch.no_grad():
        other = guide.weights(guide.sample_latent())
    terms = []
    for name, w2 in other.items():
        w = guide_trace.nodes[name]["value"].flatten()
        w2 = w2.flatten()
        terms.append((w @ w2).square() / (w.square().sum() * w2.square().sum()).clamp_min(1e-30))
    return torch.stack(terms).mean()


class GaussianPrior:
    """The Gaussian prior N(0, 1/(N * weight_decay)) of MAP on a loss's point parameters.

    By default its term (weight_decay / 2) * sum phi^2 is part of the loss. With
    ``decay_in_optimizer = True`` the loss leaves it out and the caller must give the optimiser
    ``weight_decay`` on :meth:`decayed_parameters`: SGD then adds the identical gradient
    weight_decay * phi inside its own update, instead of an extra read of every parameter in
    the loss and two more in its backward (the hypernetworks' output layers are 2.3 GB for
    WRN-28-10). ``pyro-implicit train`` does this.

    After each call, ``terms`` holds the loss's parts as detached tensors: ``data`` (the
    negative log-likelihood per datum), ``prior`` (the term above; 0 when the optimiser applies
    it) and, for ELBOs, ``kl`` (the weighted KL per datum). The prior of a large network can
    dwarf the data term in the total; print ``terms`` to see the fit.
    """

    weight_decay: float
    decay_in_optimizer: bool = False
    terms: dict[str, torch.Tensor] | None = None

    def decayed_parameters(self, model, guide) -> list[torch.nn.Parameter]:
        """The parameters under the prior: those of the model and the guide."""
        return unique_parameters(model, guide)

    def prior_term(self, model, guide, device: torch.device) -> torch.Tensor | float:
        """The prior's contribution to the loss (0 when the optimiser applies it)."""
        if not self.weight_decay or self.decay_in_optimizer:
            return 0.0
        params = self.decayed_parameters(model, guide)
        return 0.5 * self.weight_decay * squared_norm(params).to(device)

    @torch.no_grad()
    def prior_value(self, model, guide) -> float:
        """The prior term's value now, also when the optimiser applies it (for reporting)."""
        if not self.weight_decay:
            return 0.0
        return 0.5 * self.weight_decay * squared_norm(self.decayed_parameters(model, guide)).item()

    def _record(self, **terms: torch.Tensor | float) -> None:
        self.terms = {k: torch.as_tensor(v).detach() for k, v in terms.items()}


DRAW_MODES = ("groups", "mixture")


def _split(groups: int, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The batch ``tensors`` (images, labels) cut along the batch into ``groups`` parts."""
    return list(zip(*(t.tensor_split(groups) for t in tensors), strict=True))


class ImplicitMAP(GaussianPrior):
    """Callable Pyro loss ``loss(model, guide, *args, **kwargs) -> Tensor``, usable as
    ``SVI(model, guide, optim, loss=ImplicitMAP())``. ``weight_decay=0`` gives MLE.

    ``draws=K`` draws K z per step. ``mode="groups"`` splits the mini-batch into K groups, each
    run through the kernels of its own draw: the same conv FLOPs, the z-part of the gradient
    averaged over K draws (a batch of fewer than K images, such as an epoch's last, one group
    per image). ``mode="mixture"`` runs the whole batch through every draw and
    scores the mixture, -log (1/K) sum_k p(y | x, w_k): an objective that rewards draws for
    being right where the others are wrong, at K times the cost of a step.

    ``bn_groups=G`` runs the batch as G groups (each datum in one, one z draw for all of them
    with ``draws=1``) so that BatchNorm computes its statistics over B/G images: ghost batch
    normalisation (Hoffer et al. 2017), the control that tells the regularisation of ``groups``'
    smaller BatchNorm batches from the effect of its K draws. With ``mode="groups"`` and
    ``draws=K`` the K groups already have their own statistics: G is then 1 or a multiple of K,
    G/K consecutive groups sharing a draw; with ``mode="mixture"`` every draw runs the batch in
    G groups.

    ``repulsion=beta`` adds beta x the mean over weight sites of cos^2(w, w'), w the step's
    generated weights and w' those of a fresh draw z' (no gradient through w': by symmetry the
    expected gradient is that of the full term at beta / 2), a subspace-diversity term after
    Wortsman et al. (2021), who penalise cos^2 between a line's two end points; per site,
    because BatchNorm makes each layer's kernel matter by its direction only. The extra cost is
    one kernel generation per step.
    """

    def __init__(self, weight_decay: float = 5e-4, decay_in_optimizer: bool = False,
                 draws: int = 1, mode: str = "groups", repulsion: float = 0.0,
                 bn_groups: int = 1):
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not isinstance(draws, int) or draws < 1:
            raise ValueError(f"draws must be a positive integer, got {draws!r}")
        if mode not in DRAW_MODES:
            raise ValueError(f"unknown draw mode {mode!r}; choose one of: {', '.join(DRAW_MODES)}")
        if not math.isfinite(repulsion) or repulsion < 0:
            raise ValueError(f"repulsion must be a finite number >= 0, got {repulsion!r}")
        if not isinstance(bn_groups, int) or bn_groups < 1:
            raise ValueError(f"bn_groups must be a positive integer, got {bn_groups!r}")
        if mode == "groups" and draws > 1 and bn_groups > 1 and bn_groups % draws:
            raise ValueError(f"bn_groups ({bn_groups}) must be 1 or a multiple of draws "
                             f"({draws}): the {draws} groups of the draws already compute "
                             "their own BatchNorm statistics")
        self.weight_decay = weight_decay
        self.decay_in_optimizer = decay_in_optimizer
        self.draws, self.mode, self.repulsion = draws, mode, float(repulsion)
        self.bn_groups = bn_groups
        self._guide_traces: list = []

    def draw(self, model, guide, *args, **kwargs):
        """One guide trace: one z (for every image the model is replayed on with it)."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        check_guide_values(model, guide_trace)
        if self.repulsion:
            self._guide_traces.append(guide_trace)
        return guide_trace

    @staticmethod
    def replay(model, guide_trace, *args, **kwargs):
        """The model's trace on the batch ``args``, its sample sites taken from ``guide_trace``."""
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs)
        check_sites_match(guide_trace, model_trace)
        return model_trace

    def traces(self, model, guide, *args, **kwargs):
        """One guide draw (one z for the whole mini-batch) and the model replayed on it."""
        guide_trace = self.draw(model, guide, *args, **kwargs)
        return guide_trace, self.replay(model, guide_trace, *args, **kwargs)

    def loss_and_logits(self, model, guide, *args, likelihood_weight: float = 1.0,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """The differentiable loss and the model's ``logits`` site (for training accuracy).

        ``likelihood_weight`` multiplies the data term only (data-parallel training uses it to
        weight unequal shards of a global batch). A :class:`BayesianNetwork`'s inputs are
        checked first, outside Pyro's trace.
        """
        if isinstance(model, BayesianNetwork):
            model.check_inputs(*args, **kwargs)
        if self.repulsion:
            check_latent_guide(guide)
        self._guide_traces = []
        if self.draws == 1 or self.mode == "groups":
            data_term, logits = self._groups(model, guide, *args, **kwargs)
        else:
            data_term, logits = self._mixture(model, guide, *args, **kwargs)
        loss = -likelihood_weight * data_term
        prior = self.prior_term(model, guide, loss.device)
        traces, self._guide_traces = self._guide_traces, []
        if not self.repulsion:
            self._record(data=loss, prior=prior)
            return loss + prior, logits
        similarity = sum(weight_similarity(guide, t) for t in traces) / len(traces)
        self._record(data=loss, prior=prior, similarity=similarity)
        return loss + prior + self.repulsion * similarity, logits

    def _groups(self, model, guide, x: torch.Tensor, *rest: torch.Tensor, **kwargs):
        """Mean log-likelihood per datum over the batch's groups (K draws x G/K BatchNorm
        groups, at most one per image), consecutive groups sharing a draw."""
        groups = min(max(self.draws, self.bn_groups), x.shape[0])
        terms, logits, guide_trace, drawn = 0.0, [], None, -1
        for i, part in enumerate(_split(groups, x, *rest)):
            if i * self.draws // groups != drawn:
                drawn = i * self.draws // groups
                guide_trace = self.draw(model, guide, *part, **kwargs)
            model_trace = self.replay(model, guide_trace, *part, **kwargs)
            log_lik, num_data = data_log_likelihood(model_trace)
            terms = terms + log_lik / num_data * (part[0].shape[0] / x.shape[0])
            logits.append(model_trace.nodes["logits"]["value"])
        return terms, torch.cat(logits)

    def _mixture(self, model, guide, x: torch.Tensor, *rest: torch.Tensor, **kwargs):
        """Mean per-datum log of the K draws' mixture likelihood (1/K) sum_k p(y | x, w_k),
        each draw running the batch in ``bn_groups`` groups."""
        per_draw, probs = [], 0.0
        parts = _split(min(self.bn_groups, x.shape[0]), x, *rest)
        for _ in range(self.draws):
            guide_trace = self.draw(model, guide, x, *rest, **kwargs)
            traces = [self.replay(model, guide_trace, *part, **kwargs) for part in parts]
            sites = [observed_site(t) for t in traces]
            per_draw.append(torch.cat([site["fn"].log_prob(site["value"]) for site in sites]))
            logits = torch.cat([t.nodes["logits"]["value"] for t in traces])
            probs = probs + logits.softmax(-1) / self.draws
        mixture = torch.logsumexp(torch.stack(per_draw), 0) - math.log(self.draws)
        return mixture.mean(), probs  # the averaged probabilities rank like logits

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        return self.loss_and_logits(model, guide, *args, **kwargs)[0]

    __call__ = differentiable_loss
