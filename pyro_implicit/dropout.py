"""MC dropout (Gal & Ghahramani 2016) through ``Predictive``: a posterior sample is a dropout mask
stream, named by a seed.

:class:`MCDropoutNetwork` is a point network with one latent site, ``dropout.seed``. When its
value is a seed (>= 0), the pass applies dropout with masks drawn from a generator started at
that seed, whatever the modules' mode, so dropout stays on at test time while BatchNorm stays in
eval mode; the default -1 (a masked Delta, like the BN statistic sites) leaves dropout to the
modules (on in training, off in plain evaluation). :class:`MCDropoutGuide` draws a seed per
posterior sample, so ``freeze_posterior`` / ``Predictive`` average N passes, each with its own
masks (the same masks for its BN recalibration: the statistics match the sample).
"""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.dropout import _DropoutNd
from torch.overrides import TorchFunctionMode

from .guide import GuideContract
from .model import BayesianNetwork, WeightSite
from .seeds import draw_seed, seeded_generator

SEED = "dropout.seed"


def has_dropout(net: nn.Module) -> bool:
    """Whether ``net`` applies dropout anywhere (a dropout module, or a ``drop_rate`` > 0)."""
    return any((isinstance(m, _DropoutNd) and m.p > 0) or getattr(m, "drop_rate", 0) > 0
               for m in net.modules())


class SeededDropout(TorchFunctionMode):
    """Inside the block every ``F.dropout`` is applied, whatever its ``training`` flag, with
    masks from one generator started at ``seed``: the same seed and inputs give the same masks."""

    def __init__(self, seed: int, device: torch.device):
        super().__init__()
        self.generator = seeded_generator(seed, device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            keep = torch.empty_like(x).bernoulli_(1 - p, generator=self.generator)
            return x * keep / (1 - p)
        return func(*args, **kwargs)


class MCDropoutNetwork(BayesianNetwork):
    """A point network (nothing generated) whose dropout masks are the latent ``dropout.seed``."""

    def __init__(self, net: nn.Module, num_data: int):
        if not has_dropout(net):
            raise ValueError(f"MC dropout needs a network with dropout; this "
                             f"{type(net).__name__} has none (give it a drop rate > 0)")
        super().__init__(net, num_data, generated={})
        self.sites = [WeightSite(SEED, (1,), "dropout")]

    def weight_prior(self, site: WeightSite, device: torch.device) -> dist.Distribution:
        """The default -1 (dropout as the modules' mode says), as a masked Delta; on the host,
        since it is read back every training step (on a GPU that would be a sync)."""
        off = torch.full(site.shape, -1, dtype=torch.long)
        return dist.Delta(off, event_dim=1).mask(False)

    def logits(self, x: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        tensors = dict(tensors)
        seed = tensors.pop(SEED, None)
        if seed is None or int(seed) < 0:
            return super().logits(x, tensors)
        with SeededDropout(int(seed), x.device):
            return super().logits(x, tensors)

    def materialize(self, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        raise ValueError("an MC dropout sample is a stream of dropout masks, not a weight set: "
                         "it cannot be baked into a plain network")


class MCDropoutGuide(GuideContract, PyroModule):
    """Posterior samples of MC dropout: one seed per sample (latent shape (1,)); in training the
    guide emits nothing and the network drops out as usual."""

    latent_shape = (1,)

    def sample_latent(self) -> torch.Tensor:
        return draw_seed()

    def weights(self, seed: torch.Tensor) -> dict[str, torch.Tensor]:
        return {SEED: seed}

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {}
