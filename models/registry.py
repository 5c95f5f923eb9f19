"""A registry of named network configs (timm style): exact names plus parametric families."""

from __future__ import annotations

import re
from collections.abc import Callable

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
