"""PyramidNet-D-alpha (Han et al., 2017) with basic blocks, for CIFAR-sized images.

Widths grow additively from 16 by alpha / (number of blocks) per block (rounded, as the
reference code), so every block is wider than the last; shortcuts are identities, zero-padded
in channels and 2x2 average-pooled when downsampling, so they hold no conv. ``pyramidnet-110-48``
is the paper's "1.7M" model: 1,772,706 parameters, exactly as the authors' code builds it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .layers import default_weight_zero_bias
from .registry import register_configs
from .staged import StagedNetwork, check_no_dropout


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


def block_widths(depth: int, alpha: int) -> list[list[int]]:
    """Output channels of every block, stage by stage: a running sum from 16 in steps of
    alpha / (number of blocks), rounded half up, as the reference code."""
    n = (depth - 2) // 6
    step, width = alpha / (3 * n), 16.0
    widths = []
    for _ in range(3):
        stage = []
        for _ in range(n):
            width += step
            stage.append(math.floor(width + 0.5))
        widths.append(stage)
    return widths


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


class PyramidNet(StagedNetwork):
    """PyramidNet-depth-alpha: conv3x3 stem (16) + BN, three stages of (depth-2)/6 blocks,
    BN-ReLU, pool, FC; initialised as the reference (He-normal fan_out convs, unit BN scales,
    zero biases)."""

    init_linear = staticmethod(default_weight_zero_bias)
    preactivation = True

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
        check_no_dropout(model_name(depth, alpha), drop_rate)
        self.depth, self.alpha = depth, alpha
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.build_body(16, block_widths(depth, alpha), (1, 2, 2), num_classes)

    def make_block(self, stage: int, in_planes: int, out_planes: int, stride: int) -> BasicBlock:
        """A basic block with an identity (pooled, zero-padded) shortcut."""
        return BasicBlock(in_planes, out_planes, stride)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem_bn(self.stem(x))


register_configs(PyramidNet, r"pyramidnet-(\d+)-(\d+)", "pyramidnet-D-A with D = 6n+2",
                 model_name, check_config, named=((110, 48), (110, 84), (110, 270)))
