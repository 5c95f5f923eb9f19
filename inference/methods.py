"""Methods behind one interface: each builds a Pyro (model, guide) pair from a network."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pyro.nn import PyroModule
from torch import nn

from pyro_implicit import BayesianNetwork, ImplicitGuide, ImplicitMAP, PointGuide
from pyro_implicit.models import create_model

from .config import TrainConfig


def _implicit_map(config: TrainConfig) -> ImplicitMAP:
    return ImplicitMAP(config.weight_decay)


@dataclass(frozen=True)
class Method:
    """A posterior approximation: how to build its model and guide, its training objective
    (a Pyro loss offering ``loss_and_logits``), and its description."""

    build: Callable[[nn.Module, TrainConfig, int], tuple[BayesianNetwork, PyroModule]]
    description: str
    loss: Callable[[TrainConfig], object] = _implicit_map


def _hypernet(net, config: TrainConfig, num_data: int):
    model = BayesianNetwork(net, num_data)
    guide = ImplicitGuide(model, config.strategy, config.prior, config.z_dim, config.h_dim)
    return model, guide


def _point(net, config: TrainConfig, num_data: int):
    return BayesianNetwork(net, num_data, generated={}), PointGuide()


METHODS: dict[str, Method] = {
    "hypernet": Method(_hypernet, "implicit posterior: hypernetworks generate the residual-block "
                                  "convs from z ~ p(z); MAP on theta (Ukai et al. 2019)"),
    "map": Method(_point, "point estimate, weight decay on every parameter"),
}


def check_method(name: str) -> str:
    """Return ``name`` if it names a method, else raise a ValueError listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def build(config: TrainConfig, num_classes: int, in_channels: int, num_data: int):
    """The (model, guide) pair of ``config``: a fresh network wrapped by its method."""
    net = create_model(config.model, num_classes=num_classes, in_channels=in_channels,
                       drop_rate=config.drop_rate)
    return METHODS[check_method(config.method)].build(net, config, num_data)
