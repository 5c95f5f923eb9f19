"""A registry of named network configs (timm style): exact names plus parametric families."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import partial

from torch import nn

ModelFn = Callable[..., nn.Module]

_NAMED: dict[str, ModelFn] = {}
_FAMILIES: list[tuple[re.Pattern[str], str, Callable[[re.Match[str]], ModelFn]]] = []


def register_model(name: str, fn: ModelFn) -> None:
    """Register an exact config name, e.g. ``wrn-28-10``."""
    if name in _NAMED:
        raise ValueError(f"model {name!r} is already registered")
    _NAMED[name] = fn


def register_family(
    pattern: str, template: str, resolve: Callable[[re.Match[str]], ModelFn]
) -> None:
    """Register a parametric family (a regex such as ``wrn-(\\d+)-(\\d+)``); ``resolve`` builds
    its constructor from the match and may raise a ValueError naming the bad value."""
    _FAMILIES.append((re.compile(pattern), template, resolve))


def register_configs(
    build: ModelFn,
    pattern: str,
    template: str,
    name: Callable[..., str],
    check: Callable[..., None],
    named: Iterable[tuple[int, ...]] = (),
) -> None:
    """Register a family whose configs are integer tuples: each of ``named`` under ``name(*config)``
    and any other through ``pattern``, whose groups are the config, checked by ``check`` (which
    raises a ValueError naming the bad value). ``build(*config, num_classes=..., ...)`` is the
    network's constructor."""
    for config in named:
        register_model(name(*config), partial(build, *config))

    def resolve(match: re.Match[str]) -> ModelFn:
        config = tuple(int(group) for group in match.groups())
        check(*config)
        return partial(build, *config)

    register_family(pattern, template, resolve)


def list_models() -> list[str]:
    """The registered named configs, in registration order."""
    return list(_NAMED)


def model_help() -> str:
    """One line naming every valid choice, for error messages and ``--help``."""
    families = ", ".join(template for _, template, _ in _FAMILIES)
    return f"{', '.join(_NAMED)} (or any {families})"


def resolve_model(name: str) -> ModelFn:
    """Return the constructor for ``name``; a clear ValueError if it names nothing valid."""
    if name in _NAMED:
        return _NAMED[name]
    for pattern, _, resolve in _FAMILIES:
        match = pattern.fullmatch(name)
        if match:
            return resolve(match)
    raise ValueError(f"unknown model {name!r}; choose one of: {model_help()}")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build the network ``name`` for ``num_classes`` classes and ``in_channels`` input channels."""
    return resolve_model(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)
