"""ResNeXt-D-CxWd for CIFAR (Xie et al., 2017): bottlenecks with a grouped 3x3 conv.

Three stages of (D-2)/9 blocks with outputs 256, 512, 1024 channels; in stage s the grouped conv
has cardinality C and width C * W * 2^(s-1) (``resnext-29-8x64d`` is the paper's 34.4M model).
Every conv of a block, projection shortcuts included, is declared in ``residual_blocks``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Bottleneck, default_weight_zero_bias
from .registry import register_configs
from .staged import StagedNetwork, check_no_dropout


def model_name(depth: int, cardinality: int, base_width: int) -> str:
    """The registry name of a config, for error messages."""
    return f"resnext-{depth}-{cardinality}x{base_width}d"


def check_config(depth: int, cardinality: int, base_width: int) -> None:
    """Raise a ValueError naming the bad value unless depth = 9n+2 (n >= 1), C >= 1 and W >= 1."""
    name = model_name(depth, cardinality, base_width)
    if depth < 11 or (depth - 2) % 9 != 0:
        raise ValueError(f"invalid model {name!r}: ResNeXt depth must be 9n+2 "
                         "(11, 20, 29, 38, ...)")
    if cardinality < 1:
        raise ValueError(f"invalid model {name!r}: cardinality C must be >= 1")
    if base_width < 1:
        raise ValueError(f"invalid model {name!r}: base width W must be >= 1")


class ResNeXt(StagedNetwork):
    """ResNeXt-D-CxWd: conv3x3 stem (64) + BN-ReLU, three stages of bottlenecks, pool, FC;
    initialised as the reference (He-normal fan_out convs, unit BN scales, zero biases)."""

    init_linear = staticmethod(default_weight_zero_bias)

    def __init__(
        self,
        depth: int = 29,
        cardinality: int = 8,
        base_width: int = 64,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        check_config(depth, cardinality, base_width)
        check_no_dropout(model_name(depth, cardinality, base_width), drop_rate)
        n = (depth - 2) // 9
        self.depth, self.cardinality, self.base_width = depth, cardinality, base_width
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(64)
        self.build_body(64, [[256 * 2**i] * n for i in range(3)], (1, 2, 2), num_classes)

    def make_block(self, stage: int, in_planes: int, out_planes: int, stride: int) -> Bottleneck:
        """A bottleneck whose grouped 3x3 conv has C groups of width W * 2^stage."""
        return Bottleneck(in_planes, self.cardinality * self.base_width * 2**stage, out_planes,
                          stride, groups=self.cardinality)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.stem_bn(self.stem(x)))


register_configs(ResNeXt, r"resnext-(\d+)-(\d+)x(\d+)d", "resnext-D-CxWd with D = 9n+2",
                 model_name, check_config, named=((29, 8, 64), (29, 16, 64)))
