"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, 2016), pre-activation basic blocks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import register_configs
from .staged import StagedNetwork

NAMED = ((16, 1), (16, 2), (16, 4), (16, 8), (28, 1), (28, 4), (28, 10))


def model_name(depth: int, width: int) -> str:
    """The registry name of a config, for error messages."""
    return f"wrn-{depth}-{width}"


def check_config(depth: int, width: int) -> None:
    """Raise a ValueError naming the bad value unless depth = 6n+4 (n >= 1) and width >= 1."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"invalid model {model_name(depth, width)!r}: WideResNet depth must be 6n+4 "
            "(10, 16, 22, 28, 34, 40, ...)"
        )
    if width < 1:
        raise ValueError(f"invalid model {model_name(depth, width)!r}: width must be >= 1")


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


class WideResNet(StagedNetwork):
    """WRN-depth-width: a 3x3 stem conv, three stages of (depth-4)/6 blocks, BN-ReLU, pool, FC;
    initialised as the WRN reference (He-normal convs, unit BN scales, zero biases)."""

    init_linear = staticmethod(_init_fc)
    preactivation = True

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
        self.depth, self.widen_factor, self.drop_rate = depth, widen_factor, drop_rate
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        widths = [[16 * widen_factor * 2**i] * n for i in range(3)]
        self.build_body(16, widths, (1, 2, 2), num_classes)

    def make_block(self, stage: int, in_planes: int, out_planes: int, stride: int) -> BasicBlock:
        """A pre-activation basic block with the network's dropout."""
        return BasicBlock(in_planes, out_planes, stride, self.drop_rate)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


register_configs(WideResNet, r"wrn-(\d+)-(\d+)", "wrn-D-K with D = 6n+4", model_name, check_config,
                 named=NAMED)
