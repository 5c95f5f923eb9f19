"""Hypernetworks g_i(z_i; theta_i): one bias-free MLP z_dim -> h_dim (ReLU) -> kernel per layer.

All hidden layers are stored as one (L, h_dim, z_dim) tensor and applied with a single batched
matmul; all output layers are one (sum of kernel sizes, h_dim) tensor split into per-layer
views, so the optimiser sees two large tensors instead of 2L small ones. The output layers hold
h_dim x the generated weights; their forward and backward, threaded on CPU and optionally
fused with the SGD step (:meth:`HyperNetworks.fuse_sgd`), are in :mod:`.generation`.

:class:`Rank1HyperNetworks` is the cheap alternative (``GENERATORS["rank1"]``): each kernel a
shared parameter scaled per output and per input channel by factors the same kind of MLP makes
from z, as BatchEnsemble (Wen et al. 2020) and rank-1 BNNs (Dusenberry et al. 2020) do.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch
from torch import nn

from .generation import _Generate


class _HiddenLayers(nn.Module):
    """What every generator shares: the kernel shapes and one bias-free, He-uniform hidden
    layer z_dim -> h_dim (ReLU) per generated layer, stored as one (L, h_dim, z_dim) tensor."""

    def __init__(self, shapes: Sequence[Sequence[int]], z_dim: int, h_dim: int):
        super().__init__()
        if z_dim < 1 or h_dim < 1:
            raise ValueError(f"z_dim and h_dim must be >= 1, got z_dim={z_dim}, h_dim={h_dim}")
        self.shapes = [torch.Size(s) for s in shapes]
        self.sizes = [s.numel() for s in self.shapes]
        self.z_dim, self.h_dim = z_dim, h_dim
        self.hidden = nn.Parameter(torch.empty(len(self.shapes), h_dim, z_dim))

    def reset_hidden(self) -> None:
        """He-uniform hidden layers."""
        with torch.no_grad():
            he = math.sqrt(6.0 / self.z_dim)
            self.hidden.uniform_(-he, he)

    def hidden_units(self, z: torch.Tensor) -> torch.Tensor:
        """relu(H_i z_i) of every layer, shape (L, h_dim), for z of shape (L, z_dim)."""
        if z.shape != (len(self.shapes), self.z_dim):
            raise ValueError(
                f"expected z of shape {(len(self.shapes), self.z_dim)}, got {tuple(z.shape)}"
            )
        return torch.relu(torch.bmm(self.hidden, z.unsqueeze(-1)).squeeze(-1))


class HyperNetworks(_HiddenLayers):
    """The hypernetworks of every generated layer; ``forward(z)`` takes one z row per layer."""

    def __init__(self, shapes: Sequence[Sequence[int]], z_dim: int = 16, h_dim: int = 16):
        super().__init__(shapes, z_dim, h_dim)
        self.output = nn.Parameter(torch.empty(sum(self.sizes), h_dim))
        self._spare_grad: torch.Tensor | None = None
        self._fused_sgd: weakref.ref | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform hidden layers; output layers uniform with 1/10 of He's range (the paper)."""
        self.reset_hidden()
        with torch.no_grad():
            he_out = math.sqrt(6.0 / self.h_dim) / 10
            self.output.uniform_(-he_out, he_out)

    def output_weight(self, index: int) -> torch.Tensor:
        """The (kernel size, h_dim) output matrix of layer ``index`` (a view)."""
        return self.output.split(self.sizes)[index]

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Map z of shape (L, z_dim) to the L kernels."""
        hidden = self.hidden_units(z)
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


class Rank1HyperNetworks(_HiddenLayers):
    """Rank-1 generation: ``w_i = W_i * (1 + r_i(z)) (1 + s_i(z))^T`` over output and input
    channels, ``[r_i; s_i] = A_i u``, ``u = relu(H_i z) / rms(relu(H_i z))``.

    ``W_i`` (He-normal, fan-out: the networks' own init) is shared by every draw, so it learns
    from every image, and only the per-channel factors depend on z; normalising the hidden
    layer ``u`` keeps the factors' spread independent of p(z)'s scale. ``A_i`` starts so that
    the factors' perturbations are about N(0, ``factor_std``^2) (BatchEnsemble's N(1, 0.5^2)).
    """

    def __init__(self, shapes: Sequence[Sequence[int]], z_dim: int = 16, h_dim: int = 16,
                 factor_std: float = 0.5):
        super().__init__(shapes, z_dim, h_dim)
        if any(len(s) < 2 for s in self.shapes):
            raise ValueError(f"rank-1 generation needs kernels of >= 2 dims, got {self.shapes}")
        self.channels = [s[0] + s[1] for s in self.shapes]  # r_i then s_i
        self.factor_std = float(factor_std)
        self.output = nn.Parameter(torch.empty(sum(self.channels), h_dim))
        self.kernel = nn.Parameter(torch.empty(sum(self.sizes)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-uniform hidden layers, factor layers N(0, factor_std^2 / h_dim), kernels He."""
        self.reset_hidden()
        with torch.no_grad():
            self.output.normal_(0.0, self.factor_std / math.sqrt(self.h_dim))
            for w, shape in zip(self.kernel.split(self.sizes), self.shapes, strict=True):
                nn.init.kaiming_normal_(w.view(shape), mode="fan_out", nonlinearity="relu")

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Map z of shape (L, z_dim) to the L kernels."""
        hidden = self.hidden_units(z)
        hidden = hidden * hidden.square().mean(-1, keepdim=True).add(1e-12).rsqrt()
        kernels = []
        for i, (a, w, shape) in enumerate(zip(self.output.split(self.channels),
                                              self.kernel.split(self.sizes), self.shapes,
                                              strict=True)):
            r, s = (1 + a @ hidden[i]).split([shape[0], shape[1]])
            ones = (1,) * (len(shape) - 2)
            kernels.append(w.view(shape) * r.view(-1, 1, *ones) * s.view(1, -1, *ones))
        return kernels

    def extra_repr(self) -> str:
        return (f"layers={len(self.shapes)}, z_dim={self.z_dim}, h_dim={self.h_dim}, "
                f"factor_std={self.factor_std}")


# how g(z; theta) makes a kernel: the paper's full output layer, or rank-1 channel factors
GENERATORS: dict[str, type[nn.Module]] = {"full": HyperNetworks, "rank1": Rank1HyperNetworks}


def check_generator(name: str) -> str:
    """Return ``name`` if it names a generator, else raise a ValueError listing the choices."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
    return name


def release_grads(*modules: nn.Module) -> None:
    """Set the gradients of every :class:`HyperNetworks` inside ``modules`` to None, keeping
    their memory for the next backward; call it before ``optimizer.zero_grad``."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, HyperNetworks):
                m.release_grad()
