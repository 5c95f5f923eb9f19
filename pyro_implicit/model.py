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
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
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


class UnknownNameError(AttributeError, ValueError):
    """A name in ``generated`` that ``net`` does not have (an AttributeError, as torch's
    ``get_parameter`` raises, and a ValueError, as the other checks of the data boundary)."""


def closest(name: str, choices: Iterable[str]) -> str:
    """``"; closest: 'a', 'b'"`` for a message about ``name``, or ``""`` if nothing is close."""
    matches = difflib.get_close_matches(name, choices, n=3)
    return f"; closest: {', '.join(map(repr, matches))}" if matches else ""


def weight_sites(net: nn.Module, generated: Mapping[str, Sequence[str]]) -> list[WeightSite]:
    """The sites of ``generated`` (block -> parameter names of ``net``), each name checked to
    be a parameter listed once, each block to be a module of ``net`` holding its kernels or a
    block of ``net.residual_blocks()``."""
    params = dict(net.named_parameters())
    modules = dict(net.named_modules())
    declared = net.residual_blocks() if hasattr(net, "residual_blocks") else {}
    owner: dict[str, str] = {}
    sites = []
    for block, names in generated.items():
        if isinstance(names, str):
            raise TypeError(f"generated[{block!r}] must be a list of parameter names, got "
                            f"{names!r}: wrap it in a list")
        for name in names:
            if name in owner:
                raise ValueError(f"generated lists kernel {name!r} twice, in blocks "
                                 f"{owner[name]!r} and {block!r}: list each kernel once")
            if name not in params:
                raise UnknownNameError(f"generated[{block!r}] names {name!r}, which is not a "
                                       f"parameter of {type(net).__name__}"
                                       f"{closest(name, params)}")
            owner[name] = block
            sites.append(WeightSite(name, tuple(params[name].shape), block))
        if block in modules:
            outside = [n for n in names if block and not n.startswith(f"{block}.")]
            if outside:
                raise ValueError(f"generated[{block!r}] lists {outside[0]!r}, which is not "
                                 f"inside the module {block!r}")
        elif block not in declared:
            raise UnknownNameError(
                f"generated has block {block!r}, which is neither a module of "
                f"{type(net).__name__} nor one of its residual_blocks()"
                f"{closest(block, {*declared, *modules})}")
    return sites


def input_conv(net: nn.Module) -> tuple[str, int] | None:
    """The first ``nn.Conv2d`` of ``net`` (registration order) and its input channels: what
    every image must have; None without one (or for a lazy conv)."""
    return next(((n, m.in_channels) for n, m in net.named_modules()
                 if isinstance(m, nn.Conv2d) and m.in_channels), None)


def check_site_shape(name: str, value: torch.Tensor, shape: Sequence[int]) -> None:
    """Raise a ValueError unless the value at model site ``name`` has the site's ``shape``."""
    if value.shape != tuple(shape):
        raise ValueError(f"site {name!r} got a value of shape {tuple(value.shape)}, but this "
                         f"model's site has shape {tuple(shape)}: the guide or posterior was "
                         f"built for another model; build it from this one")


def check_tensor(name: str, value: object) -> None:
    """Raise a TypeError unless the argument ``name`` is a torch.Tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}: convert it "
                        f"with torch.as_tensor({name})")


class BayesianNetwork(PyroModule):
    """The Pyro model around ``net`` (which it takes over: generated kernels are removed from it).

    ``generated`` maps residual block names to the parameter names to generate; ``None`` asks
    ``net.residual_blocks()``, ``{}`` generates nothing (a plain MAP/MLE network). A block is a
    module path of ``net`` (holding its kernels) or a block of ``net.residual_blocks()``.
    ``forward`` and ``logits`` check their inputs (:meth:`check_inputs`).
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
        self.sites: list[WeightSite] = weight_sites(net, generated)
        for site in self.sites:
            module_name, _, leaf = site.name.rpartition(".")
            delattr(net.get_submodule(module_name), leaf)
        self.input_conv = input_conv(net)
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
        self.check_inputs(x)
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

    def check_inputs(self, x: object, y: object = None) -> None:
        """Raise one clear error unless ``x`` is a non-empty floating-point image batch with the
        channels of the network's first conv and ``y`` (if given) one integer label per image.
        Shapes and dtypes only: no value is read, nothing waits for the device."""
        check_tensor("x", x)
        if x.dim() != 4:
            hint = ": add the batch dimension with x.unsqueeze(0)" if x.dim() == 3 else ""
            raise ValueError(f"x must be a batch of images (batch, channels, height, width), got "
                             f"shape {tuple(x.shape)}{hint}")
        if x.shape[0] == 0:
            raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}): pass at least one "
                             f"image")
        if not x.is_floating_point():
            raise TypeError(f"x has dtype {x.dtype}, the network needs floating-point images: "
                            f"convert and normalise them first, e.g. x.float() / 255")
        if self.input_conv is not None and x.shape[1] != self.input_conv[1]:
            conv, channels = self.input_conv
            raise ValueError(f"x has {x.shape[1]} input channel(s) (shape {tuple(x.shape)}), but "
                             f"the network's first conv {conv!r} takes {channels}: pass "
                             f"{channels}-channel images, or build the network for "
                             f"{x.shape[1]} channel(s)")
        if y is None:
            return
        check_tensor("y", y)
        if y.dim() != 1:
            raise ValueError(f"y must be 1-D, one class index per image, got shape "
                             f"{tuple(y.shape)}: e.g. y.view(-1), or y.argmax(-1) for one-hot")
        if y.is_floating_point() or y.is_complex():
            raise TypeError(f"y has dtype {y.dtype}, labels must be integer class indices: "
                            f"convert them with y.long()")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} labels but x has {x.shape[0]} images: pass "
                             f"one label per image")

    def sample_site(self, name: str, fn: dist.Distribution) -> torch.Tensor:
        """``pyro.sample(name, fn)``, refusing a value (from a guide or a frozen posterior)
        whose shape is not the site's: one built for another model."""
        value = pyro.sample(name, fn)
        check_site_shape(name, value, fn.shape())
        return value

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(x, y)
        tensors = {s.name: self.sample_site(s.name, self.weight_prior(s, x.device))
                   for s in self.sites}
        net = self.net  # registers the ordinary parameters (PyroModule issues pyro.module)
        if not self.training:
            buffers = dict(net.named_buffers())
            for name in self.bn_sites:
                buf = buffers[name]
                tensors[name] = self.sample_site(
                    name, dist.Delta(buf, event_dim=buf.dim()).mask(False))
        logits = self.logits(x, tensors).float()  # under autocast: the likelihood in float32
        pyro.deterministic("logits", logits)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.num_data / x.shape[0]):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits
