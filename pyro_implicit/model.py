"""A Pyro model p(y | x, w) p(w) built from a plain torch network.

The conv kernels a network declares as generated (by default ``net.residual_blocks()``) stop
being parameters and become ``pyro.sample`` sites named after them; everything else (stem,
FC, BatchNorm affine) stays an ordinary parameter of ``net``. The likelihood is a Categorical
over a data plate scaled by ``num_data / batch``. In eval mode every BatchNorm running
statistic is read through a sample site as well (a Delta at the buffer by default), so that a
guide can pair each weight sample with its own recalibrated statistics under ``Predictive``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

BN_STATS = ("running_mean", "running_var")


@dataclass(frozen=True)
class WeightSite:
    """A generated kernel: its site (= parameter) name, shape and residual block."""

    name: str
    shape: tuple[int, ...]
    block: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def batchnorm_layers(net: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The BatchNorm layers of ``net`` that track running statistics, with their names."""
    return [(n, m) for n, m in net.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats]


class BayesianNetwork(PyroModule):
    """The Pyro model around ``net`` (which it takes over: generated kernels are removed from it).

    ``generated`` maps residual block names to the parameter names to generate; ``None`` asks
    ``net.residual_blocks()``, ``{}`` generates nothing (a plain MAP/MLE network).
    """

    def __init__(
        self,
        net: nn.Module,
        num_data: int,
        generated: Mapping[str, Sequence[str]] | None = None,
    ):
        super().__init__()
        if num_data < 1:
            raise ValueError(f"num_data must be >= 1, got {num_data}")
        if generated is None:
            if not hasattr(net, "residual_blocks"):
                raise TypeError(
                    f"{type(net).__name__} does not declare residual_blocks(); pass `generated`"
                )
            generated = net.residual_blocks()
        self.sites: list[WeightSite] = []
        for block, names in generated.items():
            for name in names:
                param = net.get_parameter(name)  # raises a clear AttributeError if missing
                self.sites.append(WeightSite(name, tuple(param.shape), block))
                module_name, _, leaf = name.rpartition(".")
                delattr(net.get_submodule(module_name), leaf)
        self.net = net
        self.num_data = num_data
        self.bn_sites = [f"{n}.{s}" for n, _ in batchnorm_layers(net) for s in BN_STATS]

    @property
    def blocks(self) -> dict[str, list[str]]:
        """Residual block -> generated site names, in forward order."""
        out: dict[str, list[str]] = {}
        for site in self.sites:
            out.setdefault(site.block, []).append(site.name)
        return out

    def weight_prior(self, site: WeightSite, device: torch.device) -> dist.Distribution:
        """p(w) of one kernel: He-scaled N(0, 2 / fan_in). Used by ELBO baselines, not by MAP."""
        fan_in = site.numel // site.shape[0]
        scale = torch.full((), math.sqrt(2.0 / fan_in), device=device)
        return dist.Normal(torch.zeros((), device=device), scale).expand(site.shape).to_event(
            len(site.shape))

    def network_tensors(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The network's parameters and buffers given the values of the model's sites (the
        generated kernels themselves here; a reparameterised model maps its latents to them)."""
        return dict(tensors)

    def logits(self, x: torch.Tensor, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run the network with ``tensors`` (generated kernels, optionally BN statistics)."""
        return functional_call(self.net, self.network_tensors(tensors), (x,), strict=False,
                               tie_weights=False)

    def materialize(self, tensors: Mapping[str, torch.Tensor]) -> nn.Module:
        """A plain copy of the network with ``tensors`` (one weight sample, optionally its BN
        statistics) baked in as ordinary parameters and buffers: one posterior sample at the
        cost of the plain CNN, with no Pyro and no hypernetwork."""
        missing = [s.name for s in self.sites if s.name not in tensors]
        if missing:
            raise ValueError(f"no value given for generated weights {missing}")
        net = copy.deepcopy(self.net)
        for name, value in self.network_tensors(tensors).items():
            module_name, _, leaf = name.rpartition(".")
            module = net.get_submodule(module_name)
            if name in self.bn_sites:
                getattr(module, leaf).copy_(value)
            else:
                module.register_parameter(leaf, nn.Parameter(value.detach().clone()))
        return net

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        tensors = {s.name: pyro.sample(s.name, self.weight_prior(s, x.device)) for s in self.sites}
        net = self.net  # registers the ordinary parameters (PyroModule issues pyro.module)
        if not self.training:
            buffers = dict(net.named_buffers())
            for name in self.bn_sites:
                buf = buffers[name]
                tensors[name] = pyro.sample(name, dist.Delta(buf, event_dim=buf.dim()).mask(False))
        logits = self.logits(x, tensors).float()  # under autocast: the likelihood in float32
        pyro.deterministic("logits", logits)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.num_data / x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits
