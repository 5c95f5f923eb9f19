"""The paper's three forms of N-sample model averaging, as plain networks built from N draws.

- ``branching`` (the paper's choice for all-in-one): N whole networks averaged at the softmax;
  this is :func:`pyro_implicit.predict_probs` / ``Predictive`` over a frozen posterior.
- ``parallelizing`` (block-wise): every residual block becomes N parallel copies, copy n built
  from draw n, and the block's output is the mean of the copies' outputs (ResNeXt-like).
- ``widening`` (layer-wise): every generated conv gets N times the channels. A conv fed by a
  widened tensor is dense over copies, block (i, j) from its own draw (N^2 draws, so parameters
  grow N^2-fold) and scaled by 1/N; the convs whose outputs leave the block are averaged over
  their N output copies. The data flow inside each block is read with ``torch.fx``.

In both assembled forms BatchNorm layers are duplicated per copy (affine parameters copied),
and all running statistics are recalibrated for the assembled network by the caller (see
:func:`assemble`). With N = 1 every form is exactly the single-sample network. Nothing here
knows an architecture: blocks are the module paths ``model.blocks`` names.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .model import BayesianNetwork
from .posterior import FrozenPosterior

FORMS = ("branching", "parallelizing", "widening")
Draw = Mapping[str, torch.Tensor]  # one draw's generated kernels, keyed by site name
Weights = FrozenPosterior | Sequence[Draw] | Callable[[int], Draw]


def check_form(name: str) -> str:
    """Return ``name`` if it names a form, else raise a ValueError listing the choices."""
    if name not in FORMS:
        raise ValueError(f"unknown form {name!r}; choose one of: {', '.join(FORMS)}")
    return name


def draws_needed(form: str, n: int) -> int:
    """How many weight draws the form consumes for N = ``n`` (widening: one per conv block)."""
    check_form(form)
    return n * n if form == "widening" and n > 1 else n


class ParallelBlock(nn.Module):
    """N copies of a residual block on the same input, averaged at their outputs."""

    def __init__(self, copies: list[nn.Module]):
        super().__init__()
        self.copies = nn.ModuleList(copies)

    def forward(self, *args, **kwargs):
        if len(self.copies) == 1:
            return self.copies[0](*args, **kwargs)
        return torch.stack([c(*args, **kwargs) for c in self.copies]).mean(0)


class WideConv(nn.Module):
    """A generated conv widened to N copies: kernels ``(n_out, n_in, C_out, C_in/g, k, k)``.

    Input channels are laid out copy-major (n_in, C_in); block (i, j) maps input copy j to
    output copy i and the sum over j is divided by n_in. ``average`` returns the mean over the
    output copies (C_out channels) instead of the widened (n_out * C_out) tensor. All blocks
    run as one conv: channels are reordered group-major so grouped convs stay grouped.
    """

    def __init__(self, conv: nn.Conv2d, kernels: torch.Tensor, average: bool):
        super().__init__()
        n_out, n_in, out, in_per_group, *k = kernels.shape
        if average:  # a mean over output copies of a linear map = the map of the mean kernel
            kernels, n_out = kernels.mean(0, keepdim=True), 1
        g = conv.groups
        self.n_in, self.n_out, self.groups = n_in, n_out, g
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        if conv.padding_mode != "zeros":
            raise ValueError(f"widening supports zero-padded convs, got {conv.padding_mode!r}")
        w = kernels.reshape(n_out, n_in, g, out // g, in_per_group, *k)
        w = w.permute(2, 0, 3, 1, 4, 5, 6).reshape(g * n_out * (out // g), n_in * in_per_group, *k)
        self.register_buffer("weight", (w / n_in).contiguous())
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().repeat(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        g = self.groups
        if g > 1 and self.n_in > 1:  # copy-major (n_in, g, c) -> group-major (g, n_in, c)
            x = x.view(b, self.n_in, g, -1, h, w).transpose(1, 2).reshape(b, -1, h, w)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, g)
        if g > 1 and self.n_out > 1:
            y = y.view(b, g, self.n_out, -1, *y.shape[2:]).transpose(1, 2).flatten(1, 3)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        return f"n_out={self.n_out}, n_in={self.n_in}, groups={self.groups}"


def widened_bn(bn: _BatchNorm, n: int) -> _BatchNorm:
    """A BatchNorm over N copies of ``bn``'s channels, affine parameters and statistics tiled."""
    wide = copy.deepcopy(bn)
    wide.num_features = n * bn.num_features
    for name, value in list(bn.named_parameters(recurse=False)):
        setattr(wide, name, nn.Parameter(value.detach().repeat(n)))
    for name in ("running_mean", "running_var"):
        if getattr(bn, name) is not None:
            setattr(wide, name, getattr(bn, name).repeat(n))
    return wide


def widening_plan(block: nn.Module, convs: set[str]) -> dict[str, tuple[bool, bool]]:
    """For each generated conv of ``block`` (names relative to it): (widened input, averaged
    output), plus every BatchNorm fed by a widened tensor as (True, False).

    A generated conv's output is averaged when it reaches the block output without passing
    another generated conv; every other generated conv widens its output.
    """
    graph = torch.fx.symbolic_trace(block).graph
    nodes = list(graph.nodes)
    leaves_block: dict[torch.fx.Node, bool] = {}
    for node in reversed(nodes):
        leaves_block[node] = node.op == "output" or any(
            leaves_block[u] and not (u.op == "call_module" and u.target in convs)
            for u in node.users)
    modules = dict(block.named_modules())
    widened: dict[torch.fx.Node, bool] = {}
    plan: dict[str, tuple[bool, bool]] = {}
    for node in nodes:
        inputs = [widened[a] for a in node.all_input_nodes if a.op != "get_attr"]
        wide_in = any(inputs)
        if node.op == "call_module" and node.target in convs:
            plan[node.target] = (wide_in, leaves_block[node])
            widened[node] = not leaves_block[node]
            continue
        if wide_in and node.op == "call_module":
            module = modules[node.target]
            if isinstance(module, _BatchNorm):
                plan[node.target] = (True, False)
            elif any(True for _ in module.parameters(recurse=False)):
                raise ValueError(f"cannot widen: {node.target!r} ({type(module).__name__}) has "
                                 "parameters and sits between generated convs")
        if wide_in and not all(inputs):
            raise ValueError(f"cannot widen: {node.format_node()} mixes widened and plain "
                             "tensors")
        widened[node] = wide_in
    return plan


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _block_module(net: nn.Module, block: str) -> nn.Module:
    try:
        return net.get_submodule(block)
    except AttributeError as err:
        raise ValueError(f"averaging forms need residual blocks named by module path; {block!r} "
                         f"is not a submodule of {type(net).__name__}") from err


def _draws(weights: Weights, count: int, form: str, n: int) -> list[dict[str, torch.Tensor]]:
    """The first ``count`` draws of ``weights``, whichever of the accepted kinds it is."""
    if isinstance(weights, FrozenPosterior):  # a guide (callable) itself: test it first
        available, draw = len(weights), weights.sample_weights
    elif isinstance(weights, Sequence):
        available, draw = len(weights), weights.__getitem__
    elif callable(weights):
        available, draw = count, weights
    else:
        raise TypeError("weights must be a FrozenPosterior, a list of draws (site name -> "
                        f"kernel) or a function m -> draw m; got {type(weights).__name__}")
    if available < count:
        raise ValueError(f"{form} with n={n} needs {count} draws "
                         f"(draws_needed), got {available}")
    return [dict(draw(m)) for m in range(count)]


def assemble(model: BayesianNetwork, weights: Weights, n: int, form: str) -> nn.Module:
    """A plain network averaging ``n`` draws in ``form`` ("parallelizing" or "widening").

    ``weights`` gives the draws (generated kernels, site name -> tensor): a
    :class:`~pyro_implicit.FrozenPosterior`, a list of draws (e.g. ``guide.weights(z)`` for
    several z), or a function ``m -> draw m``; the first ``draws_needed(form, n)`` are used.
    BatchNorm statistics are copied from ``model.net`` (a frozen posterior's per-draw statistics
    belong to single networks): recalibrate them for the assembled network before use (see
    :func:`recalibrate_bn`).
    """
    if check_form(form) == "branching":
        raise ValueError("branching averages whole networks: use predict_probs / Predictive")
    if n < 1:
        raise ValueError(f"the number of averaged draws must be >= 1, got {n}")
    draws = _draws(weights, draws_needed(form, n), form, n)
    for m, draw in enumerate(draws):
        missing = [s.name for s in model.sites if s.name not in draw]
        if missing:
            raise ValueError(f"draw {m} has no kernel for generated sites {missing}")
    net = copy.deepcopy(model.net)
    for block, names in model.blocks.items():
        module = _block_module(net, block)
        local = {name: name[len(block) + 1:] for name in names}
        if form == "parallelizing":
            copies = [_with_kernels(module, {local[s]: draws[i][s] for s in names})
                      for i in range(n)]
            _set_submodule(net, block, ParallelBlock(copies))
            continue
        wide = _with_kernels(module, {local[s]: draws[0][s] for s in names})
        convs = {local[s].rpartition(".")[0]: s for s in names}
        for target, (wide_in, average) in widening_plan(wide, set(convs)).items():
            layer = wide.get_submodule(target)
            if target not in convs:
                _set_submodule(wide, target, widened_bn(layer, n))
                continue
            if type(layer) is not nn.Conv2d:
                raise ValueError(f"widening generates nn.Conv2d kernels; {block}.{target} is a "
                                 f"{type(layer).__name__}")
            n_in = n if wide_in else 1
            kernels = torch.stack([torch.stack([draws[i * n_in + j][convs[target]]
                                                for j in range(n_in)]) for i in range(n)])
            _set_submodule(wide, target, WideConv(layer, kernels, average))
        _set_submodule(net, block, wide)
    return net


def _with_kernels(block: nn.Module, kernels: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``block`` with the generated ``kernels`` (relative names) as parameters."""
    block = copy.deepcopy(block)
    for name, value in kernels.items():
        module_name, _, leaf = name.rpartition(".")
        block.get_submodule(module_name).register_parameter(
            leaf, nn.Parameter(value.detach().clone(), requires_grad=False))
    return block
