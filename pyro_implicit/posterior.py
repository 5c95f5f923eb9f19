"""Frozen posterior samples for Bayesian model averaging with Pyro.

A :class:`FrozenPosterior` keeps N latent draws (the z of each weight sample, not the weights)
and the BatchNorm statistics recalibrated for each. As a guide it emits, call after call and
cyclically, sample i's weights g(z_i; theta) and BN statistics, so
``Predictive(model, guide=frozen, num_samples=len(frozen))`` visits every sample exactly once
(Predictive's two shape-probing calls only shift where the cycle starts).

:func:`predict_probs` and :func:`model_average` do what Predictive does for each sample —
trace the frozen guide, replay the model on it (``poutine.replay``) and read the ``logits``
site — without Predictive's two extra probing forwards per call and without stacking N weight
sets: one weight set exists at a time, generated once per sample however many batches it
sees, and the model runs in eval mode so its own running statistics are never touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import nn
from tqdm.auto import tqdm

from .batchnorm import recalibrate_bn
from .model import BayesianNetwork, batchnorm_layers


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block, then restore every submodule's own mode."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


class FrozenPosterior(PyroModule):
    """N fixed posterior samples of ``guide`` (latents + per-sample BN statistics), as a guide."""

    def __init__(self, guide: PyroModule, latents: torch.Tensor, bn_stats: dict[str, torch.Tensor]):
        super().__init__()
        if latents.shape[0] < 1:
            raise ValueError("a frozen posterior needs at least one sample")
        for name, value in bn_stats.items():
            if value.shape[0] != latents.shape[0]:
                raise ValueError(
                    f"{name}: {value.shape[0]} statistics for {latents.shape[0]} samples")
        self._guide = (guide,)  # a reference, not a submodule: theta is saved with the guide
        self.latents = latents
        self.bn_stats = dict(bn_stats)
        self._next = 0
        self._cache: tuple[tuple, dict[str, torch.Tensor]] | None = None

    @property
    def guide(self) -> PyroModule:
        return self._guide[0]

    def __len__(self) -> int:
        return self.latents.shape[0]

    def subset(self, start: int, stop: int) -> FrozenPosterior:
        """Samples ``start:stop`` as a frozen posterior of their own."""
        return FrozenPosterior(self.guide, self.latents[start:stop],
                               {k: v[start:stop] for k, v in self.bn_stats.items()})

    def sample_weights(self, index: int) -> dict[str, torch.Tensor]:
        """Generated kernels and BN statistics of sample ``index``, keyed by model site name.

        The last sample's kernels are kept (until theta changes), so evaluating one sample on
        many batches generates them once.
        """
        key = (index, *(p._version for p in self.guide.parameters()))
        if self._cache is None or self._cache[0] != key:
            tensors = dict(self.guide.weights(self.latents[index]))
            tensors.update({k: v[index] for k, v in self.bn_stats.items()})
            self._cache = (key, tensors)
        return dict(self._cache[1])

    def emit(self, index: int) -> dict[str, torch.Tensor]:
        """The guide's sample statements for sample ``index`` (z, kernels, BN statistics)."""
        z = self.latents[index]
        pyro.sample("z", dist.Delta(z, event_dim=z.dim()), infer={"is_auxiliary": True})
        tensors = self.sample_weights(index)
        for name, value in tensors.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))
        return tensors

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        index, self._next = self._next, (self._next + 1) % len(self)
        return self.emit(index)


@torch.no_grad()
def freeze_posterior(
    model: BayesianNetwork,
    guide: PyroModule,
    num_samples: int,
    batches: Callable[[], Iterable[torch.Tensor]] | None = None,
    num_batches: int | None = None,
    progress: bool | None = False,
    distributed: bool = False,
) -> FrozenPosterior:
    """Draw ``num_samples`` latents from ``guide`` and recalibrate BN statistics for each.

    ``batches()`` yields training inputs (augmentation off); ``num_batches=None`` uses one full
    pass, as the paper. Without ``batches`` (or without BN) the network's own running
    statistics are frozen with every sample. The network's buffers are left as they were.
    ``distributed`` shares each recalibration pass among the ranks of the process group (all
    ranks must draw the same latents, i.e. share the RNG seed).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    latents = torch.stack([guide.sample_latent() for _ in range(num_samples)])
    net = model.net
    buffers = {f"{n}.{k}": b for n, bn in batchnorm_layers(net) for k, b in bn.named_buffers()}
    saved = {name: b.clone() for name, b in buffers.items()}
    per_sample: list[dict[str, torch.Tensor]] = []
    try:
        for z in tqdm(latents, desc="BN recalibration", leave=False,
                      disable=None if progress is None else not progress):
            if batches is None or not buffers:
                per_sample.append({name: saved[name] for name in model.bn_sites})
                continue
            weights = guide.weights(z)
            stats = recalibrate_bn(net, batches(), lambda x, w=weights: model.logits(x, w),
                                   num_batches, distributed)
            per_sample.append(stats)
    finally:
        for name, value in saved.items():
            buffers[name].copy_(value)
    bn_stats = {name: torch.stack([s[name] for s in per_sample]) for name in model.bn_sites}
    return FrozenPosterior(guide, latents, bn_stats)


@torch.no_grad()
def sample_logits(model: BayesianNetwork, posterior: FrozenPosterior, index: int,
                  x: torch.Tensor) -> torch.Tensor:
    """Logits of frozen sample ``index`` on ``x``: the model replayed on the guide's trace.

    Call it with the model in eval mode (see :func:`eval_mode`), as :func:`predict_probs` does.
    """
    guide_trace = poutine.trace(posterior.emit).get_trace(index)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return model_trace.nodes["logits"]["value"]


@torch.no_grad()
def predict_probs(model: BayesianNetwork, posterior: FrozenPosterior,
                  x: torch.Tensor) -> torch.Tensor:
    """Per-sample class probabilities, shape (N, batch, classes)."""
    with eval_mode(model):
        return torch.stack([sample_logits(model, posterior, i, x).softmax(-1)
                            for i in range(len(posterior))])


@torch.no_grad()
def model_average(model: BayesianNetwork, posterior: FrozenPosterior,
                  x: torch.Tensor) -> torch.Tensor:
    """Bayesian model average (1/N) sum_n softmax(F(x; w_n)), streaming over the samples."""
    total = None
    with eval_mode(model):
        for i in range(len(posterior)):
            probs = sample_logits(model, posterior, i, x).softmax(-1)
            total = probs if total is None else total + probs
    return total / len(posterior)
