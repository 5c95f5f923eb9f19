"""Find the residual blocks of a network the library does not know, for ``BayesianNetwork``.

``BayesianNetwork(net, num_data, generated=residual_kernels(net))`` makes torchvision's
``resnet*``, ``wide_resnet*`` and ``resnext*``, timm's ResNets (``timm.models.resnet.ResNet``)
and any network built of similar blocks Bayesian in one line, without ``residual_blocks()``.
"""

from __future__ import annotations

import operator

import torch
import torch.fx
from torch import nn

_ADDS = {operator.add, torch.add, "add", "add_"}  # a + b, torch.add, a.add(b), a.add_(b)


def residual_kernels(net: nn.Module, projections: bool = True) -> dict[str, list[str]]:
    """Residual block name -> the kernel names of its convs, in forward order.

    A residual block is a module with ``nn.Conv2d`` children ``conv1`` and ``conv2`` whose
    forward (read with ``torch.fx``) adds a shortcut from the block input to a branch through
    ``conv1``: torchvision's and timm's ``BasicBlock`` and ``Bottleneck``, and the blocks of
    ``pyro_implicit.models``. Its kernels are those of every ``nn.Conv2d`` the block runs:
    conv1, conv2 (conv3), any attention convs (timm's SE) and, as in the networks' own
    ``residual_blocks()``, the projection shortcut's conv (torchvision's ``downsample.0``);
    ``projections=False`` leaves projections out. Convs outside blocks (the stem's ``conv1``)
    stay ordinary parameters.
    """
    blocks: dict[str, list[str]] = {}
    for name, module in net.named_modules():
        if any(name.startswith(f"{block}.") for block in blocks):
            continue  # inside a block already found
        kernels = _block_kernels(name, module, projections)
        if kernels is not None:
            blocks[name] = [f"{name}.{conv}.weight" if name else f"{conv}.weight"
                            for conv in kernels]
    if not blocks:
        raise ValueError(f"found no residual blocks in {type(net).__name__}: no module has "
                         "nn.Conv2d children conv1 and conv2 and adds a shortcut from its input; "
                         "pass BayesianNetwork the `generated` mapping (block -> kernel names)")
    return blocks


def _block_kernels(name: str, module: nn.Module, projections: bool) -> list[str] | None:
    """The convs ``module`` runs (names relative to it), or None unless it is a residual block."""
    if not all(isinstance(getattr(module, c, None), nn.Conv2d) for c in ("conv1", "conv2")):
        return None
    try:
        graph = torch.fx.Tracer().trace(module)
    except Exception as err:  # fx raises many kinds on untraceable code
        raise ValueError(f"cannot read the data flow of {name or 'the network'} "
                         f"({type(module).__name__}) with torch.fx to tell whether it is a "
                         "residual block; pass BayesianNetwork the `generated` mapping") from err
    ancestors: dict[torch.fx.Node, set[torch.fx.Node]] = {}
    for node in graph.nodes:
        ancestors[node] = {node}.union(*(ancestors[a] for a in node.all_input_nodes))
    convs = [n for n in graph.nodes if n.op == "call_module"
             and isinstance(module.get_submodule(n.target), nn.Conv2d)]
    first = next((n for n in convs if n.target == "conv1"), None)
    if first is None:
        return None
    inputs = {n for n in graph.nodes if n.op == "placeholder"}
    shortcuts = []  # operands added to the branch through conv1 that come from the input
    for node in graph.nodes:
        if node.op not in ("call_function", "call_method") or node.target not in _ADDS:
            continue
        shortcuts += [b for a, b in _operand_pairs(node) if first in ancestors[a]
                      and first not in ancestors[b] and inputs & ancestors[b]]
    if not shortcuts:
        return None
    skipped = set() if projections else set().union(*(ancestors[b] for b in shortcuts))
    return list(dict.fromkeys(n.target for n in convs if n not in skipped))


def _operand_pairs(node: torch.fx.Node) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """Both orders of an addition's two node operands (none if either is a constant)."""
    a, b = (*node.args, None, None)[:2]
    if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
        return []
    return [(a, b), (b, a)]
