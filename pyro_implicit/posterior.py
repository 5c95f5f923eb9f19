"""Frozen posterior samples for Bayesian model averaging through ``pyro.infer.Predictive``.

A :class:`FrozenPosterior` keeps N latent draws (the z of each weight sample, not the weights)
and the BatchNorm statistics recalibrated for each. As a guide it emits, call after call and
cyclically, sample i's weights g(z_i; theta) and BN statistics, so
``Predictive(model, guide=frozen, num_samples=len(frozen))`` visits every sample exactly once
(Predictive's shape-probing calls only shift where the cycle starts; the guide logs the order
it emitted, so per-sample outputs can be put back in sample order). :func:`predict_probs` and
:func:`model_average` chunk the samples so that peak
memory is bounded by ``chunk_size`` weight sets, whatever N is, and run the model in eval mode
so that the network's own running statistics are never touched.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Iterable, Iterator

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Predictive
from pyro.nn import PyroModule
from torch import nn
from tqdm.auto import tqdm

from .batchnorm import recalibrate_bn
from .model import BayesianNetwork, batchnorm_layers

DEFAULT_CHUNK_BYTES = 256 * 2**20


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
        # indices of the last len(self) samples emitted, in emission order
        self.emitted: collections.deque[int] = collections.deque(maxlen=latents.shape[0])

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
        """Generated kernels and BN statistics of sample ``index``, keyed by model site name."""
        tensors = dict(self.guide.weights(self.latents[index]))
        tensors.update({k: v[index] for k, v in self.bn_stats.items()})
        return tensors

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        index, self._next = self._next, (self._next + 1) % len(self)
        self.emitted.append(index)
        z = self.latents[index]
        pyro.sample("z", dist.Delta(z, event_dim=z.dim()), infer={"is_auxiliary": True})
        tensors = self.sample_weights(index)
        for name, value in tensors.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))
        return tensors


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


def default_chunk_size(model: BayesianNetwork, max_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many weight sets fit in ``max_bytes`` (at least one)."""
    per_sample = 4 * sum(site.numel for site in model.sites)
    return max(1, max_bytes // max(per_sample, 1))


@torch.no_grad()
def predict_probs(
    model: BayesianNetwork,
    posterior: FrozenPosterior,
    x: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Per-sample class probabilities, shape (N, batch, classes), via ``Predictive`` in chunks."""
    return torch.cat(list(_chunked_probs(model, posterior, x, chunk_size)))


@torch.no_grad()
def model_average(
    model: BayesianNetwork,
    posterior: FrozenPosterior,
    x: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Bayesian model average (1/N) sum_n softmax(F(x; w_n)), streaming over the samples."""
    total = None
    for probs in _chunked_probs(model, posterior, x, chunk_size):
        part = probs.sum(0)
        total = part if total is None else total + part
    return total / len(posterior)


def _chunked_probs(model, posterior, x, chunk_size) -> Iterator[torch.Tensor]:
    chunk = default_chunk_size(model) if chunk_size is None else chunk_size
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk}")
    with eval_mode(model):
        for start in range(0, len(posterior), chunk):
            part = posterior.subset(start, min(start + chunk, len(posterior)))
            predictive = Predictive(model, guide=part, num_samples=len(part),
                                    return_sites=["logits"])
            logits = predictive(x)["logits"]  # (n, 1, batch, classes): Predictive adds plate dims
            # Predictive's sequential pass is the guide's last n calls: undo the rotation
            order = torch.tensor(list(part.emitted)).argsort()
            yield logits.reshape(len(part), x.shape[0], -1)[order].softmax(-1)
