"""PyramidNet-D-alpha (Han et al., 2017) with basic blocks, for CIFAR-sized images.

Widths grow additively from 16 by alpha / (number of blocks) per block (rounded, as the
reference code), so every block is wider than the last; shortcuts are identities, zero-padded
in channels and 2x2 average-pooled when downsampling, so they hold no conv. ``pyramidnet-110-48``
is the paper's "1.7M" model: 1,772,706 parameters, exactly as the authors' code builds it.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from .layers import default_weight_zero_bias, init_weights, stage_kernels
from .registry import register_family, register_model


def model_name(depth: int, alpha: int) -> str:
    """The registry name of a config, for error messages."""
    return f"pyramidnet-{depth}-{alpha}"


def check_config(depth: int, alpha: int) -> None:
    """Raise a ValueError naming the bad value unless depth = 6n+2 (n >= 1) and alpha >= 0."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(f"invalid model {model_name(depth, alpha)!r}: PyramidNet depth must be "
                         "6n+2 (8, 14, 20, ..., 110, ...)")
    if alpha < 0:
        raise ValueError(f"invalid model {model_name(depth, alpha)!r}: alpha must be >= 0")


class BasicBlock(nn.Module):
    """BN-conv3x3-BN-ReLU-conv3x3-BN plus the input, avg-pooled if strided and zero-padded to the
    wider output."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.extra_channels = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.conv1(self.bn1(x))
        o = F.relu(self.bn2(o))
        o = self.bn3(self.conv2(o))
        identity = x if self.stride == 1 else F.avg_pool2d(x, 2, ceil_mode=True)
        if self.extra_channels:
            identity = F.pad(identity, (0, 0, 0, 0, 0, self.extra_channels))
        return o + identity


class PyramidNet(nn.Module):
    """PyramidNet-depth-alpha: conv3x3 stem (16) + BN, three stages of (depth-2)/6 blocks,
    BN-ReLU, pool, FC."""

    def __init__(
        self,
        depth: int = 110,
        alpha: int = 48,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        check_config(depth, alpha)
        if drop_rate > 0:
            raise ValueError(f"{model_name(depth, alpha)} has no dropout: drop_rate must be 0, "
                             f"got {drop_rate}")
        n = (depth - 2) // 6
        self.depth, self.alpha = depth, alpha
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        step, width, in_planes = alpha / (3 * n), 16.0, 16
        self._stage_names = []
        for i, stride in enumerate((1, 2, 2)):
            blocks = []
            for j in range(n):
                width += step
                planes = math.floor(width + 0.5)  # round half up, as the reference code
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            self._stage_names.append(f"stage{i + 1}")
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan_out) convs, unit BN scales, zero biases (the reference initialisation)."""
        init_weights(self, default_weight_zero_bias)

    def residual_blocks(self) -> dict[str, list[str]]:
        """Residual block name -> names of the conv kernels inside it, in forward order."""
        return stage_kernels(self, self._stage_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_bn(self.stem(x))
        for stage_name in self._stage_names:
            x = getattr(self, stage_name)(x)
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _pyramidnet(depth: int, alpha: int):
    def build(num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0) -> PyramidNet:
        return PyramidNet(depth, alpha, num_classes, in_channels, drop_rate)

    build.__doc__ = f"PyramidNet-{depth} (alpha = {alpha})."
    return build


for _depth, _alpha in ((110, 48), (110, 84), (110, 270)):
    register_model(model_name(_depth, _alpha), _pyramidnet(_depth, _alpha))


def _resolve_pyramidnet(match: re.Match[str]):
    depth, alpha = int(match.group(1)), int(match.group(2))
    check_config(depth, alpha)
    return _pyramidnet(depth, alpha)


register_family(r"pyramidnet-(\d+)-(\d+)", "pyramidnet-D-A with D = 6n+2", _resolve_pyramidnet)
