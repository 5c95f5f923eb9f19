"""One file for a model, its guide and a frozen posterior, loadable in any process.

:func:`save` writes plain containers, tensors, strings and numbers only, so
``torch.load(path, weights_only=True)`` reads it and nothing in it can run code: how to rebuild
the network (``architecture``), the model's and the guide's classes and constructor settings,
their ``state_dict`` s (parameters and every BatchNorm buffer), the guide's state outside its
``state_dict`` (the hypernetwork guide's anchor and spread, an ensemble's draw count) and the
frozen samples. :func:`load` rebuilds all of it.

A network is an arbitrary ``nn.Module``, and nothing in it says how it was built, so ``save``
takes ``architecture``: a :func:`pyro_implicit.models.create_model` name, or the import path
``"package.module:Class"`` of an ``nn.Module`` subclass, or of a model builder of torchvision or
timm (``"torchvision.models:resnet18"``, ``"timm:create_model"``), each with keyword arguments,
e.g. ``("wrn-16-2", {"num_classes": 10})``. ``save`` checks that it rebuilds a network of the
same parameter and buffer names and shapes. :func:`load` imports the named module but calls
nothing other than ``create_model``, an ``nn.Module`` subclass or those libraries' builders, so
a file cannot make it run an arbitrary function.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter

import torch
from pyro.nn import PyroModule
from torch import nn

from .bayes_hypernet import ScaleFlow, WeightNormNetwork
from .bbb import MeanFieldNormal
from .dropout import MCDropoutGuide, MCDropoutNetwork
from .ensemble import EnsembleGuide
from .guide import ImplicitGuide, PointGuide
from .laplace import LastLayerLaplace
from .model import BayesianNetwork, WeightSite
from .models import create_model
from .posterior import FrozenPosterior, sync_param_store
from .swag import SWAGGuide

FORMAT = "pyro-implicit-save/1"

Architecture = str | tuple[str, Mapping[str, object]]
"""A ``create_model`` name or a ``"package.module:Class"`` path, alone or with its kwargs."""

PLAIN = (str, int, float, bool, type(None))
BUILDER_LIBRARIES = ("torchvision.models", "timm")  # whose functions load may call


def _blocks(sites: list[WeightSite]) -> dict[str, list[str]]:
    """Residual block -> generated kernel names, the ``generated`` mapping that made ``sites``."""
    out: dict[str, list[str]] = {}
    for site in sites:
        out.setdefault(site.block, []).append(site.name)
    return out


@dataclass(frozen=True)
class Kind:
    """How one model or guide class is saved: its constructor's settings (besides the network
    or the model), whether the constructor takes the model, and attributes to keep that its
    ``state_dict`` lacks."""

    settings: Callable[[nn.Module], dict[str, object]]
    takes_model: bool = True
    extra: tuple[str, ...] = ()


MODELS: dict[type, Kind] = {
    BayesianNetwork: Kind(lambda m: {"num_data": m.num_data, "generated": _blocks(m.sites)}),
    WeightNormNetwork: Kind(lambda m: {"num_data": m.num_data,
                                       "generated": _blocks(m.kernel_sites),
                                       "prior_scale": m.prior_scale}),
    MCDropoutNetwork: Kind(lambda m: {"num_data": m.num_data}),
}

# initial values (MeanFieldNormal's init_loc/init_scale, ScaleFlow's init_scale) are not
# settings: the saved parameters replace them; ImplicitGuide's anchor is kept, not its seed
GUIDES: dict[type, Kind] = {
    ImplicitGuide: Kind(lambda g: {"strategy": g.strategy, "prior": g.prior,
                                   "z_dim": g.hypernet.z_dim, "h_dim": g.hypernet.h_dim,
                                   "z_loc": g.z_loc, "z_scale": g.z_scale,
                                   "generator": g.generator},
                        extra=("anchor", "spread")),
    PointGuide: Kind(lambda g: {}, takes_model=False),
    MeanFieldNormal: Kind(lambda g: {}),
    ScaleFlow: Kind(lambda g: {"layers": len(g.couplings),
                               "hidden": g.couplings[0].nn.hidden_dims[0]}),
    MCDropoutGuide: Kind(lambda g: {}, takes_model=False),
    EnsembleGuide: Kind(lambda g: {"members": g.num_members}, extra=("draws",)),
    SWAGGuide: Kind(lambda g: {"rank": g.rank}),
    LastLayerLaplace: Kind(lambda g: {}),
}


def _kind(obj: nn.Module, kinds: dict[type, Kind], what: str) -> Kind:
    kind = kinds.get(type(obj))
    if kind is None:
        raise TypeError(f"cannot save a {what} of class {type(obj).__name__}; supported: "
                        f"{', '.join(k.__name__ for k in kinds)}")
    return kind


def _check_plain(value: object, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` would not read back."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, where)
    elif not isinstance(value, PLAIN):
        raise TypeError(f"{where} must hold only strings, numbers, booleans, None, lists and "
                        f"dicts, got a {type(value).__name__}")


def _architecture(architecture: Architecture) -> dict[str, object]:
    name, kwargs = (architecture, {}) if isinstance(architecture, str) else architecture
    if not isinstance(name, str):
        raise TypeError(f"architecture must be a name or (name, kwargs), got {architecture!r}")
    _check_plain(dict(kwargs), "architecture kwargs")
    return {"name": name, "kwargs": dict(kwargs)}


def _build_network(architecture: Mapping[str, object]) -> nn.Module:
    """The network an architecture record names: ``create_model(name, **kwargs)``, or the
    ``nn.Module`` subclass at ``"package.module:Class"`` called with ``kwargs``."""
    name, kwargs = architecture["name"], architecture["kwargs"]
    if ":" not in name:
        return create_model(name, **kwargs)
    module, _, qualname = name.partition(":")
    target = attrgetter(qualname)(importlib.import_module(module))
    library = any(module == lib or module.startswith(lib + ".") for lib in BUILDER_LIBRARIES)
    if not (isinstance(target, type) and issubclass(target, nn.Module)
            or library and callable(target)):
        raise TypeError(f"architecture {name!r} is not an nn.Module subclass; load only "
                        "builds networks by a class, a create_model name or a builder of "
                        f"{' or '.join(BUILDER_LIBRARIES)}")
    network = target(**kwargs)
    if not isinstance(network, nn.Module):
        raise TypeError(f"architecture {name!r} built a {type(network).__name__}, not a network")
    return network


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value.shape) for name, value in module.state_dict().items()}


def save(path: str | os.PathLike, model: BayesianNetwork, guide: PyroModule,
         frozen: FrozenPosterior | None = None, *,
         architecture: Architecture | None = None) -> None:
    """Write ``model``, ``guide`` and optionally ``frozen`` to ``path`` for :func:`load`.

    ``architecture`` says how to rebuild the network (see the module docstring); without it
    the file still holds everything else, but :func:`load` refuses it.
    """
    model_settings = _kind(model, MODELS, "model").settings(model)
    guide_kind = _kind(guide, GUIDES, "guide")
    if frozen is not None and frozen.guide is not guide:
        raise ValueError("frozen is a posterior of another guide than the one saved")
    record = None
    if architecture is not None:
        record = _architecture(architecture)
        with torch.random.fork_rng(devices=[]):
            rebuilt = type(model)(_build_network(record), **model_settings)
        if _shapes(rebuilt) != _shapes(model):
            wrong = sorted(set(_shapes(rebuilt).items()) ^ set(_shapes(model).items()))
            raise ValueError(f"architecture {record['name']!r} with {record['kwargs']} does not "
                             f"rebuild this network: it differs at {wrong[0][0]!r}")
    state = {
        "format": FORMAT,
        "architecture": record,
        "model": {"class": type(model).__name__, "settings": model_settings,
                  "training": model.training, "state": model.state_dict()},
        "guide": {"class": type(guide).__name__, "settings": guide_kind.settings(guide),
                  "extra": {name: getattr(guide, name) for name in guide_kind.extra},
                  "training": guide.training, "state": guide.state_dict()},
        "frozen": None if frozen is None else frozen.state_dict(),
    }
    torch.save(state, path)


def _by_name(kinds: dict[type, Kind], name: str, what: str) -> type:
    for cls in kinds:
        if cls.__name__ == name:
            return cls
    raise ValueError(f"the file holds a {what} of class {name!r}, which load does not know")


def load(path: str | os.PathLike) -> tuple[BayesianNetwork, PyroModule, FrozenPosterior | None]:
    """Rebuild ``(model, guide, frozen)`` from a file :func:`save` wrote; ``frozen`` is None
    when none was saved.

    Tensors are loaded to the CPU (move the modules with ``.to(device)``), the global RNG is
    left as it was, and the loaded parameters replace any of the same names in Pyro's param
    store, so ``SVI`` trains them.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by pyro_implicit.save")
    if state["architecture"] is None:
        raise ValueError(f"{path} was saved without an architecture, so its network cannot be "
                         "rebuilt: save it with save(..., architecture=NAME or (NAME, KWARGS))")
    saved_model, saved_guide = state["model"], state["guide"]
    guide_cls = _by_name(GUIDES, saved_guide["class"], "guide")
    with torch.random.fork_rng(devices=[]):  # initial values are drawn, then overwritten
        model_cls = _by_name(MODELS, saved_model["class"], "model")
        model = model_cls(_build_network(state["architecture"]), **saved_model["settings"])
        model_arg = (model,) if GUIDES[guide_cls].takes_model else ()
        guide = guide_cls(*model_arg, **saved_guide["settings"])
    model.load_state_dict(saved_model["state"])
    guide.load_state_dict(saved_guide["state"])
    for name, value in saved_guide["extra"].items():
        if isinstance(value, torch.Tensor):
            getattr(guide, name).copy_(value)
        else:
            setattr(guide, name, value)
    model.train(saved_model["training"])
    guide.train(saved_guide["training"])
    sync_param_store(model, guide, source="modules")
    frozen = state["frozen"]
    if frozen is not None:
        frozen = FrozenPosterior.from_state_dict(guide, frozen, model)
    return model, guide, frozen
