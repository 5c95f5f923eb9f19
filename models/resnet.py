"""ResNet-D for ImageNet-sized images (He et al., 2016), bottleneck blocks, torchvision layout.

Module and parameter names are torchvision's (``conv1``, ``layer1.0.downsample.0``, ``fc``), so
``resnet-50`` loads a torchvision ``resnet50`` state dict. The family ``resnet-D-wW`` scales
every width by W / 64 (stem included) for small CPU configs such as ``resnet-14-w8``.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Bottleneck, init_weights, stage_kernels
from .registry import register_family, register_model

# bottleneck blocks per stage for each supported depth (3 convs per block + stem + fc)
LAYOUTS: dict[int, tuple[int, int, int, int]] = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    38: (3, 3, 3, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
NAMED_DEPTHS = (50, 101, 152)  # registered at width 64 as resnet-50, resnet-101, resnet-152
EXPANSION = 4  # a bottleneck's output has 4x its width


def model_name(depth: int, width: int) -> str:
    """The registry name of a config, for error messages (``resnet-50`` for the named ones)."""
    if width == 64 and depth in NAMED_DEPTHS:
        return f"resnet-{depth}"
    return f"resnet-{depth}-w{width}"


def check_config(depth: int, width: int) -> None:
    """Raise a ValueError naming the bad value unless depth has a layout and width >= 1."""
    if depth not in LAYOUTS:
        raise ValueError(f"invalid model {model_name(depth, width)!r}: ResNet depth must be one "
                         f"of {', '.join(map(str, LAYOUTS))}")
    if width < 1:
        raise ValueError(f"invalid model {model_name(depth, width)!r}: width must be >= 1")


class ResNet(nn.Module):
    """ResNet-depth: 7x7/2 stem + BN-ReLU + 3x3/2 max-pool, four bottleneck stages, pool, FC."""

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        check_config(depth, width)
        if drop_rate > 0:
            raise ValueError(f"{model_name(depth, width)} has no dropout: drop_rate must be 0, "
                             f"got {drop_rate}")
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        self._stage_names = []
        for i, (n, stride) in enumerate(zip(LAYOUTS[depth], (1, 2, 2, 2), strict=True)):
            planes = width * 2**i
            # the projection is ``downsample``, torchvision's name, so its weights load
            blocks = [Bottleneck(in_planes if j == 0 else planes * EXPANSION, planes,
                                 planes * EXPANSION, stride if j == 0 else 1,
                                 shortcut_name="downsample") for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self._stage_names.append(f"layer{i + 1}")
            in_planes = planes * EXPANSION
        self.fc = nn.Linear(in_planes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal (fan_out) convs, unit BN scales (no zero-init of the last BN), default FC, as
        torchvision."""
        init_weights(self)

    def residual_blocks(self) -> dict[str, list[str]]:
        """Residual block name -> names of the conv kernels inside it, in forward order."""
        return stage_kernels(self, self._stage_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        for stage_name in self._stage_names:
            x = getattr(self, stage_name)(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _resnet(depth: int, width: int):
    def build(num_classes: int = 1000, in_channels: int = 3, drop_rate: float = 0.0) -> ResNet:
        return ResNet(depth, width, num_classes, in_channels, drop_rate)

    build.__doc__ = f"ResNet-{depth} (base width {width})."
    return build


for _depth in NAMED_DEPTHS:
    register_model(model_name(_depth, 64), _resnet(_depth, 64))


def _resolve_resnet(match: re.Match[str]):
    depth, width = int(match.group(1)), int(match.group(2))
    check_config(depth, width)
    return _resnet(depth, width)


register_family(r"resnet-(\d+)-w(\d+)",
                f"resnet-D-wW with D in {', '.join(map(str, LAYOUTS))} and base width W (64 as "
                "torchvision)", _resolve_resnet)
