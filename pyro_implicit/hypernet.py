"""Hypernetworks g_i(z_i; theta_i): one bias-free MLP z_dim -> h_dim (ReLU) -> kernel per layer.

All hidden layers are stored as one (L, h_dim, z_dim) tensor and applied with a single batched
matmul; all output layers are one (sum of kernel sizes, h_dim) tensor split into per-layer
views, so the optimiser sees two large tensors instead of 2L small ones. The output layers hold
h_dim x the generated weights (2.3 GB for WRN-28-10), so their backward writes each layer's
gradient straight into one tensor (:class:`_Generate`): autograd's own split backward would
materialise it twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class _Generate(torch.autograd.Function):
    """Kernels w_l = W_l h_l for all layers; W_l are row blocks of one (sum sizes, h) tensor."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, hidden: torch.Tensor, sizes: list[int],
                owner: HyperNetworks):
        ctx.save_for_backward(output, hidden)
        ctx.sizes, ctx.owner = sizes, owner
        return tuple(w @ h for w, h in zip(output.split(sizes), hidden, strict=True))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        output, hidden = ctx.saved_tensors
        need_output, need_hidden = ctx.needs_input_grad[:2]
        grad_output = ctx.owner.take_spare_grad(output) if need_output else None
        # under autocast hidden and the incoming grads are bfloat16 while output stays float32:
        # the hidden gradient is formed in output's dtype and returned in hidden's
        grad_hidden = torch.empty_like(hidden, dtype=output.dtype) if need_hidden else None
        start = 0
        for i, (size, g) in enumerate(zip(ctx.sizes, grads, strict=True)):
            rows = slice(start, start + size)
            if need_output:  # the outer product g h^T, written in place
                torch.mul(g.unsqueeze(1), hidden[i].unsqueeze(0), out=grad_output[rows])
            if need_hidden:
                torch.mv(output[rows].t(), g.to(output.dtype), out=grad_hidden[i])
            start += size
        if grad_hidden is not None:
            grad_hidden = grad_hidden.to(hidden.dtype)
        return grad_output, grad_hidden, None, None


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

    def extra_repr(self) -> str:
        return f"layers={len(self.shapes)}, z_dim={self.z_dim}, h_dim={self.h_dim}"


def release_grads(*modules: nn.Module) -> None:
    """Set the gradients of every :class:`HyperNetworks` inside ``modules`` to None, keeping
    their memory for the next backward; call it before ``optimizer.zero_grad``."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, HyperNetworks):
                m.release_grad()
