"""Theta's CPU passes: kernel generation and the hidden layers' gradient over row ranges of the
output layers theta on a thread pool, and the SGD step fused into the output layers' backward.

:class:`_Generate` is the autograd Function of :class:`~pyro_implicit.hypernet.HyperNetworks`'
output layers. Theta holds h_dim x the generated weights (2.3 GB for WRN-28-10), so its backward
writes each layer's gradient straight into one tensor: autograd's own split backward would
materialise it twice. On CPU its matrix-vector products (generation, and the hidden layers'
gradient) run on a few Python threads over row ranges of theta: BLAS runs each on one core, and
these passes over theta are a large part of the step on big networks. With
:meth:`~pyro_implicit.hypernet.HyperNetworks.fuse_sgd` the backward also applies the SGD update
to theta and never writes its gradient: one sweep over theta and its momentum (:mod:`.native`;
without a C++ compiler, chunk by chunk in torch) instead of four passes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise, repeat
from typing import Protocol

import torch

from .native import fused_sgd_kernel

MIN_TASK_ROWS = 1 << 16  # a layer's rows of theta are split across threads only in ranges this long
CHUNK_ROWS = 1 << 14  # rows of theta updated at once by the fused SGD backward (1 MB at h_dim 16)
_pool: tuple[int, ThreadPoolExecutor] | None = None
_local = threading.local()  # per thread: the fused backward's scratch, kept between steps


class GradientOwner(Protocol):
    """What :class:`_Generate` asks of the module owning theta (a
    :class:`~pyro_implicit.hypernet.HyperNetworks`): whether its backward should apply the SGD
    step itself, and memory for the gradient it writes otherwise."""

    def fused_sgd_group(self) -> tuple[torch.optim.SGD, dict] | None: ...

    def take_spare_grad(self, like: torch.Tensor) -> torch.Tensor: ...


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
                owner: GradientOwner):
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
