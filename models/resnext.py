"""ResNeXt-D-CxWd for CIFAR (Xie et al., 2017): bottlenecks with a grouped 3x3 conv.

Three stages of (D-2)/9 blocks with outputs 256, 512, 1024 channels; in stage s the grouped conv
has cardinality C and width C * W * 2^(s-1) (``resnext-29-8x64d`` is the paper's 34.4M model).
Every conv of a block, projection shortcuts included, is declared in ``residual_blocks``.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Bottleneck, default_weight_zero_bias, init_weights, stage_kernels
from .registry import register_family, register_model


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


class ResNeXt(nn.Module):
    """ResNeXt-D-CxWd: conv3x3 stem (64) + BN-ReLU, three stages of bottlenecks, pool, FC."""

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
        if drop_rate > 0:
            raise ValueError(f"{model_name(depth, cardinality, base_width)} has no dropout: "
                             f"drop_rate must be 0, got {drop_rate}")
        n = (depth - 2) // 9
        self.depth, self.cardinality, self.base_width = depth, cardinality, base_width
        self.stem = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(64)
        in_planes = 64
        self._stage_names = []
        for i, stride in enumerate((1, 2, 2)):
            width, out_planes = cardinality * base_width * 2**i, 256 * 2**i
            blocks = [Bottleneck(in_planes if j == 0 else out_planes, width, out_planes,
                                 stride if j == 0 else 1, groups=cardinality) for j in range(n)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*blocks))
            self._stage_names.append(f"stage{i + 1}")
            in_planes = out_planes
        self.fc = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan_out) convs, unit BN scales, zero biases (the reference initialisation)."""
        init_weights(self, default_weight_zero_bias)

    def residual_blocks(self) -> dict[str, list[str]]:
        """Residual block name -> names of the conv kernels inside it, in forward order."""
        return stage_kernels(self, self._stage_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        for stage_name in self._stage_names:
            x = getattr(self, stage_name)(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _resnext(depth: int, cardinality: int, base_width: int):
    def build(num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0) -> ResNeXt:
        return ResNeXt(depth, cardinality, base_width, num_classes, in_channels, drop_rate)

    build.__doc__ = f"ResNeXt-{depth} ({cardinality}x{base_width}d)."
    return build


for _depth, _card, _width in ((29, 8, 64), (29, 16, 64)):
    register_model(model_name(_depth, _card, _width), _resnext(_depth, _card, _width))


def _resolve_resnext(match: re.Match[str]):
    depth, cardinality, base_width = (int(g) for g in match.groups())
    check_config(depth, cardinality, base_width)
    return _resnext(depth, cardinality, base_width)


register_family(r"resnext-(\d+)-(\d+)x(\d+)d", "resnext-D-CxWd with D = 9n+2",
                _resolve_resnext)
