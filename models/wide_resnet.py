"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, 2016), pre-activation basic blocks.

Besides being an ordinary ``nn.Module``, a network declares which conv kernels live inside its
residual blocks (``residual_blocks``); ``pyro_implicit`` generates exactly those with
hypernetworks and never needs to know the architecture.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from .layers import init_weights, stage_kernels
from .registry import register_family, register_model


def check_config(depth: int, width: int) -> None:
    """Raise a ValueError naming the bad value unless depth = 6n+4 (n >= 1) and width >= 1."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"invalid model 'wrn-{depth}-{width}': WideResNet depth must be 6n+4 "
            "(10, 16, 22, 28, 34, 40, ...)"
        )
    if width < 1:
        raise ValueError(f"invalid model 'wrn-{depth}-{width}': width must be >= 1")


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, with a 1x1 projection where the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # The projection sees the pre-activated input, as in the reference implementation.
        identity = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.drop_rate > 0:
            o = F.dropout(o, p=self.drop_rate, training=self.training)
        return self.conv2(o) + identity


def _init_fc(m: nn.Linear) -> None:
    """Uniform He weights with gain 1 and a zero bias (the WRN reference's FC)."""
    nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
    nn.init.zeros_(m.bias)


class WideResNet(nn.Module):
    """WRN-depth-width: a 3x3 stem conv, three stages of (depth-4)/6 blocks, BN-ReLU, pool, FC."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        check_config(depth, widen_factor)
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.depth, self.widen_factor, self.drop_rate = depth, widen_factor, drop_rate
        self.stem = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        stages = []
        in_planes = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True)):
            blocks = [BasicBlock(in_planes if j == 0 else planes, planes, stride if j == 0 else 1,
                                 drop_rate) for j in range(n)]
            stages.append((f"stage{i + 1}", nn.Sequential(*blocks)))
            in_planes = planes
        for name, stage in stages:
            self.add_module(name, stage)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        self._stage_names = [name for name, _ in stages]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convs, unit BN scales, zero biases (the WRN reference initialisation)."""
        init_weights(self, _init_fc)

    def residual_blocks(self) -> dict[str, list[str]]:
        """Residual block name -> names of the conv kernels inside it: conv1, conv2, then the
        projection if any."""
        return stage_kernels(self, self._stage_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage_name in self._stage_names:
            x = getattr(self, stage_name)(x)
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _wrn(depth: int, width: int):
    def build(num_classes: int = 10, in_channels: int = 3, drop_rate: float = 0.0) -> WideResNet:
        return WideResNet(depth, width, num_classes, in_channels, drop_rate)

    build.__doc__ = f"WRN-{depth}-{width}."
    return build


for _depth, _width in ((16, 1), (16, 2), (16, 4), (16, 8), (28, 1), (28, 4), (28, 10)):
    register_model(f"wrn-{_depth}-{_width}", _wrn(_depth, _width))


def _resolve_wrn(match: re.Match[str]):
    depth, width = int(match.group(1)), int(match.group(2))
    check_config(depth, width)
    return _wrn(depth, width)


register_family(r"wrn-(\d+)-(\d+)", "wrn-D-K with D = 6n+4", _resolve_wrn)
