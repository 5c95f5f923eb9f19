"""How z is shared across generated layers: one z, one per residual block, or one per layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

STRATEGIES = ("all-in-one", "block-wise", "layer-wise")


def check_strategy(name: str) -> str:
    """Return ``name`` if it names a strategy, else raise a ValueError listing the choices."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")
    return name


def group_layers(blocks: Mapping[str, Sequence[str]], strategy: str) -> tuple[list[str], list[int]]:
    """Split generated layers into z groups.

    ``blocks`` maps each residual block to its generated layer names (forward order). Returns the
    group names and, for every layer in that order, the index of the group whose z it reads.
    """
    check_strategy(strategy)
    layers = [(block, name) for block, names in blocks.items() for name in names]
    if strategy == "all-in-one":
        return ["all"], [0] * len(layers)
    if strategy == "block-wise":
        groups = list(blocks)
        return groups, [groups.index(block) for block, _ in layers]
    groups = [name for _, name in layers]
    return groups, list(range(len(layers)))
