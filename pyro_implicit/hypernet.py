"""Hypernetworks g_i(z_i; theta_i): one bias-free MLP z_dim -> h_dim (ReLU) -> kernel per layer.

All hidden layers are stored as one (L, h_dim, z_dim) tensor and applied with a single batched
matmul; all output layers are one (sum of kernel sizes, h_dim) tensor split into per-layer
views, so the optimiser sees two large tensors instead of 2L small ones. The output layers hold
h_dim x the generated weights (2.3 GB for WRN-28-10), so their backward writes each layer's
gradient straight into one tensor (:class:`_Generate`): autograd's own split backward would
materialise it twice. On CPU their matrix-vector products (generation, and the hidden layers'
gradient) run on a few Python threads over row ranges of theta: BLAS runs each on one core, and
these passes over theta are a large part of the step on big networks. With :meth:`HyperNetworks.
fuse_sgd` the backward also applies the SGD update to the output layers and never writes their
gradient: one sweep over theta and its momentum (:mod:`.native`; without a C++ compiler, chunk
by chunk in torch) instead of four passes.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise, repeat

import torch
from torch import nn

from .native import fused_sgd_kernel

MIN_TASK_ROWS = 1 << 16  # a layer's rows of theta are split across threads only in ranges this long
CHUNK_ROWS = 1 << 14  # rows of theta updated at once by the fused SGD backward (1 MB at h_dim 16)
_pool: tuple[int, ThreadPoolExecutor] | None = None
_local = threading.local()  # per thread: the fused backward's scratch, kept between steps


def _threads_for(output: torch.Tensor) -> int:
    """How many threads share theta's matrix-vector products: torch's CPU threads, else 1 (on
    an accelerator, or under autocast, whose casts ``out=`` products would skip)."""
    if output.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return 1
    return torch.get_num_threads()


def _row_ranges(sizes: Sequence[int], threads: int) -> list[tuple[int, int, int]]:
    """(layer, first row, end row) ranges of each layer's output block, in block coordinates:
    a layer of at least ``threads x MIN_TASK_ROWS`` rows is cut into ``threads`` ranges."""
    ranges = []
    for layer, size in enumerate(sizes):
        parts = max(1, min(threads, size // MIN_TASK_ROWS))
        cuts = [size * k // parts for k in range(parts + 1)]
        ranges += [(layer, a, b) for a, b in pairwise(cuts)]
    return ranges


@torch.no_grad()
def _each_range(fn: Callable[[int, int, int, int], object],
                ranges: list[tuple[int, int, int]], sizes: Sequence[int], threads: int) -> None:
    """Call ``fn(j, layer, a, b)`` for every range j of ``ranges`` (:func:`_row_ranges`); the
    ranges of cut layers run on a pool of ``threads`` Python threads (torch releases the GIL),
    the others here: a thread hand-off costs more than a small layer's product."""
    global _pool
    whole = {layer for layer, a, b in ranges if b - a == sizes[layer]}
    pooled = [(j, r) for j, r in enumerate(ranges) if r[0] not in whole]
    if pooled and (_pool is None or _pool[0] != threads):
        _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="hypernet"))
    futures = [_pool[1].submit(_no_grad_call, fn, j, *r) for j, r in pooled]
    for j, r in enumerate(ranges):
        if r[0] in whole:
            fn(j, *r)
    for future in futures:
        future.result()


@torch.no_grad()
def _no_grad_call(fn: Callable[..., object], *args: int) -> None:
    fn(*args)  # grad mode is per thread: a pool thread has it on, and ``out=`` refuses it


class _Generate(torch.autograd.Function):
    """Kernels w_l = W_l h_l for all layers; W_l are row blocks of one (sum sizes, h) tensor."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, hidden: torch.Tensor, sizes: list[int],
                owner: HyperNetworks):
        ctx.save_for_backward(output, hidden)
        ctx.sizes, ctx.owner = sizes, owner
        blocks = output.split(sizes)
        threads = _threads_for(output)
        if threads == 1:
            return tuple(w @ h for w, h in zip(blocks, hidden, strict=True))
        kernels = [output.new_empty(size) for size in sizes]
        _each_range(lambda j, i, a, b: torch.mv(blocks[i][a:b], hidden[i], out=kernels[i][a:b]),
                    _row_ranges(sizes, threads), sizes, threads)
        return tuple(kernels)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        output, hidden = ctx.saved_tensors
        need_output, need_hidden = ctx.needs_input_grad[:2]
        fused = ctx.owner.fused_sgd_group() if need_output else None
        kernel = fused_sgd_kernel() if fused is not None and output.dtype in (
            torch.float32, torch.float64) else None
        threads = _threads_for(output)
        ranges = _row_ranges(ctx.sizes, threads)
        # under autocast hidden and the incoming grads are bfloat16 while output stays float32:
        # the gradients are formed in output's dtype, and the hidden one returned in hidden's
        blocks, grads32 = output.split(ctx.sizes), [g.to(output.dtype) for g in grads]
        partials = output.new_zeros(len(ranges), hidden.shape[1])  # theta_l^T g_l per range
        if fused is not None:
            _each_range(_fused_sgd_range(output, hidden, grads32, ctx.sizes, partials, fused,
                                         need_hidden, kernel), ranges, ctx.sizes, threads)
        elif need_hidden:
            _each_range(lambda j, i, a, b: torch.mv(
                blocks[i][a:b].t(), grads32[i][a:b], out=partials[j]), ranges, ctx.sizes, threads)
        grad_hidden = grad_output = None
        if need_hidden:
            layer = torch.tensor([i for i, _, _ in ranges], device=output.device)
            grad_hidden = partials.new_zeros(hidden.shape).index_add_(0, layer, partials)
            grad_hidden = grad_hidden.to(hidden.dtype)
        if need_output and fused is None:  # the outer products g_l h_l^T, written in place
            grad_output = ctx.owner.take_spare_grad(output)
            for block, g, h in zip(grad_output.split(ctx.sizes), grads, hidden, strict=True):
                torch.mul(g.unsqueeze(1), h.unsqueeze(0), out=block)
        return grad_output, grad_hidden, None, None


def _scratch(like: torch.Tensor) -> torch.Tensor:
    """This thread's (CHUNK_ROWS, h) scratch like ``like``, kept between calls: a megabyte
    allocated afresh per range and step, in a pool thread's malloc arena, page-faults anew."""
    buf = getattr(_local, "scratch", None)
    if (buf is None or buf.shape != (CHUNK_ROWS, like.shape[1]) or buf.dtype != like.dtype
            or buf.device != like.device):
        buf = _local.scratch = like.new_empty(CHUNK_ROWS, like.shape[1])
    return buf


def _fused_sgd_range(output: torch.Tensor, hidden: torch.Tensor, grads: list[torch.Tensor],
                     sizes: Sequence[int], partials: torch.Tensor,
                     fused: tuple[torch.optim.SGD, dict], need_hidden: bool,
                     kernel: Callable | None = None) -> Callable[[int, int, int, int], None]:
    """The range function of the fused backward: for rows a:b of layer i, put theta^T g in
    ``partials[j]`` (before the update) and apply the group's SGD step to theta and its
    momentum with gradient g h^T: the same update ``optimizer.step`` would make. ``kernel``
    (:func:`~pyro_implicit.native.fused_sgd_kernel`) does it in one sweep; without it, chunk by
    chunk, g h^T is formed in a small scratch and stepped by the kernel of ``SGD(fused=True)``."""
    optimizer, group = fused
    state = optimizer.state[output]
    momentum = group["momentum"] != 0
    first = momentum and "momentum_buffer" not in state
    if first:
        state["momentum_buffer"] = torch.empty_like(output)
    blocks = output.split(sizes)
    buffers = state["momentum_buffer"].split(sizes) if momentum else None
    hidden = hidden.to(output.dtype)
    options = {k: group[k] for k in ("weight_decay", "momentum", "lr", "dampening", "nesterov")}

    def update(j: int, i: int, a: int, b: int) -> None:
        g = grads[i][a:b]
        if kernel is not None:
            partials[j] = kernel(blocks[i][a:b], buffers[i][a:b] if momentum else None,
                                 g.contiguous(), hidden[i].contiguous(), float(options["lr"]),
                                 options["momentum"], options["dampening"],
                                 options["weight_decay"], options["nesterov"], first)
            return
        chunks = zip(blocks[i][a:b].split(CHUNK_ROWS), g.unsqueeze(1).split(CHUNK_ROWS),
                     g.unsqueeze(0).split(CHUNK_ROWS, dim=1),
                     buffers[i][a:b].split(CHUNK_ROWS) if momentum else repeat(None), strict=False)
        scratch = _scratch(output)
        h, acc = hidden[i].unsqueeze(0), partials[j:j + 1]
        for rows, g_column, g_row, buffer in chunks:
            if need_hidden:
                acc.addmm_(g_row, rows)
            grad = torch.mul(g_column, h, out=scratch[:len(rows)])
            torch._fused_sgd_([rows], [grad], [] if buffer is None else [buffer],
                              maximize=False, is_first_step=first, **options)

    return update


class HyperNetworks(nn.Module):
    """The hypernetworks of every generated layer; ``forward(z)`` takes one z row per layer."""

    def __init__(self, shapes: Sequence[Sequence[int]], z_dim: int = 16, h_dim: int = 16):
        super().__init__()
        if z_dim < 1 or h_dim < 1:
            raise ValueError(f"z_dim and h_dim must be >= 1, got z_dim={z_dim}, h_dim={h_dim}")
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [s.numel() for s in self.shapes]
        self.z_dim, self.h_dim = z_dim, h_dim
        self.hidden = nn.Parameter(torch.empty(len(self.shapes), h_dim, z_dim))
        self.output = nn.Parameter(torch.empty(sum(self.sizes), h_dim))
        self._spare_grad: torch.Tensor | None = None
        self._fused_sgd: weakref.ref | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform hidden layers; output layers uniform with 1/10 of He's range (the paper)."""
        with torch.no_grad():
            he = math.sqrt(6.0 / self.z_dim)
            self.hidden.uniform_(-he, he)
            he_out = math.sqrt(6.0 / self.h_dim) / 10
            self.output.uniform_(-he_out, he_out)

    def output_weight(self, index: int) -> torch.Tensor:
        """The (kernel size, h_dim) output matrix of layer ``index`` (a view)."""
        return self.output.split(self.sizes)[index]

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Map z of shape (L, z_dim) to the L kernels."""
        if z.shape != (len(self.shapes), self.z_dim):
            raise ValueError(
                f"expected z of shape {(len(self.shapes), self.z_dim)}, got {tuple(z.shape)}"
            )
        hidden = torch.relu(torch.bmm(self.hidden, z.unsqueeze(-1)).squeeze(-1))  # (L, h_dim)
        kernels = _Generate.apply(self.output, hidden, self.sizes, self)
        return [w.view(shape) for w, shape in zip(kernels, self.shapes, strict=True)]

    def release_grad(self) -> None:
        """Set the output layers' gradient to None but keep its memory for the next backward.

        That gradient is h_dim x the generated weights (2.3 GB for WRN-28-10): allocating it
        afresh every step costs more in page faults than writing it.
        """
        if self.output.grad is not None:
            self._spare_grad, self.output.grad = self.output.grad, None

    def take_spare_grad(self, like: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor like ``like``: the released gradient when it fits."""
        spare, self._spare_grad = self._spare_grad, None
        if (spare is None or spare.shape != like.shape or spare.dtype != like.dtype
                or spare.device != like.device or spare.stride() != like.stride()):
            return torch.empty_like(like)
        return spare

    def fuse_sgd(self, optimizer: torch.optim.SGD | None) -> None:
        """Let backward apply ``optimizer``'s SGD step to the output layers (on CPU), in the same
        pass over theta that forms the hidden layers' gradient, instead of writing a gradient
        of h_dim x the generated weights for ``optimizer.step`` to read back; ``None`` undoes it.

        ``optimizer.step`` then skips the output layers (their ``grad`` stays None), so each
        backward *is* their update: no gradient accumulation, clipping or data-parallel
        all-reduce of theta. Only a weak reference to ``optimizer`` is kept.
        """
        if optimizer is None:
            self._fused_sgd = None
            return
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"fuse_sgd needs a torch.optim.SGD, got {type(optimizer).__name__}")
        if not hasattr(torch, "_fused_sgd_"):
            raise RuntimeError(f"fuse_sgd needs torch's fused SGD kernel, which torch "
                               f"{torch.__version__} lacks")
        group = self._group_of(optimizer)
        if group is None:
            raise ValueError("the optimiser does not update this module's output layers")
        unsupported = {k: group[k] for k in ("maximize", "differentiable") if group.get(k)}
        if unsupported:
            raise ValueError(f"fuse_sgd supports maximize=False and differentiable=False, got "
                             f"{unsupported}")
        self._fused_sgd = weakref.ref(optimizer)

    def fused_sgd_group(self) -> tuple[torch.optim.SGD, dict] | None:
        """(optimizer, param group) when backward should update the output layers itself: a
        live fused optimiser that still holds them, on CPU (elsewhere the separate passes run
        at memory speed and one fused pass would cost a kernel launch per chunk)."""
        optimizer = self._fused_sgd() if self._fused_sgd is not None else None
        if optimizer is None or self.output.device.type != "cpu":
            return None
        group = self._group_of(optimizer)
        return None if group is None else (optimizer, group)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fused_sgd": None}  # a pickled copy has no optimiser to fuse

    def _group_of(self, optimizer: torch.optim.Optimizer) -> dict | None:
        return next((g for g in optimizer.param_groups
                     if any(p is self.output for p in g["params"])), None)

    def extra_repr(self) -> str:
        return f"layers={len(self.shapes)}, z_dim={self.z_dim}, h_dim={self.h_dim}"


def release_grads(*modules: nn.Module) -> None:
    """Set the gradients of every :class:`HyperNetworks` inside ``modules`` to None, keeping
    their memory for the next backward; call it before ``optimizer.zero_grad``."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, HyperNetworks):
                m.release_grad()
