"""The skeleton every network here shares: a stem, stages of residual blocks, a pooled FC head.

Besides being an ordinary ``nn.Module``, a network declares which conv kernels live inside its
residual blocks (``residual_blocks``); ``pyro_implicit`` generates exactly those with
hypernetworks and never needs to know the architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .layers import init_weights, stage_kernels


def check_no_dropout(name: str, drop_rate: float) -> None:
    """Refuse a positive ``drop_rate`` for the network ``name``, which has no dropout layer."""
    if drop_rate > 0:
        raise ValueError(f"{name} has no dropout: drop_rate must be 0, got {drop_rate}")


class StagedNetwork(nn.Module):
    """Stem -> stages of residual blocks -> (BN-ReLU) -> global average pool -> FC.

    A family builds its stem in ``__init__``, then calls ``build_body``; it defines
    ``forward_stem`` and ``make_block`` and sets the class attributes ``init_linear`` and
    ``preactivation``. Stages are the attributes ``{prefix}1``, ``{prefix}2``, ...
    """

    init_linear: Callable[[nn.Linear], None] = staticmethod(nn.Linear.reset_parameters)
    """How ``reset_parameters`` initialises the FC (convs and BNs are the same everywhere)."""
    preactivation: bool = False
    """Whether blocks end without BN-ReLU, so the head applies one (``bn``) before pooling."""

    def build_body(self, in_planes: int, widths: Sequence[Sequence[int]],
                   strides: Sequence[int], num_classes: int, prefix: str = "stage") -> None:
        """Add stage ``{prefix}{i + 1}`` with one block per entry of ``widths[i]`` (its output
        channels; the first block strides by ``strides[i]``), then the head, then initialise:
        everything after the stem, created in this order so the RNG draws match the references."""
        self._stage_names: list[str] = []
        for i, (stage_widths, stride) in enumerate(zip(widths, strides, strict=True)):
            blocks = []
            for j, planes in enumerate(stage_widths):
                blocks.append(self.make_block(i, in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            self._stage_names.append(f"{prefix}{i + 1}")
            self.add_module(self._stage_names[-1], nn.Sequential(*blocks))
        if self.preactivation:
            self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def make_block(self, stage: int, in_planes: int, out_planes: int, stride: int) -> nn.Module:
        """One residual block of stage ``stage`` (0-based): the family's block type."""
        raise NotImplementedError

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """The family's stem, from the image to the first stage's input."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """He-normal (fan_out, ReLU) convs, unit-scale zero-shift BNs, the FC by ``init_linear``."""
        init_weights(self, self.init_linear)

    def residual_blocks(self) -> dict[str, list[str]]:
        """Residual block name (``stage.j``) -> names of the conv kernels inside it, projections
        included, in forward order: the kernels a hypernetwork generates."""
        return stage_kernels(self, self._stage_names)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """BN-ReLU if ``preactivation``, then global average pooling and the FC."""
        if self.preactivation:
            x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for stage_name in self._stage_names:
            x = getattr(self, stage_name)(x)
        return self.forward_head(x)
