"""ResNet-D for ImageNet-sized images (He et al., 2016), bottleneck blocks, torchvision layout.

Module and parameter names are torchvision's (``conv1``, ``layer1.0.downsample.0``, ``fc``), so
``resnet-50`` loads a torchvision ``resnet50`` state dict. The family ``resnet-D-wW`` scales
every width by W / 64 (stem included) for small CPU configs such as ``resnet-14-w8``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Bottleneck
from .registry import register_configs
from .staged import StagedNetwork, check_no_dropout

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


class ResNet(StagedNetwork):
    """ResNet-depth: 7x7/2 stem + BN-ReLU + 3x3/2 max-pool, four bottleneck stages, pool, FC.

    Initialised as torchvision: He-normal (fan_out) convs, unit BN scales (no zero-init of the
    last BN), default FC."""

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
        check_no_dropout(model_name(depth, width), drop_rate)
        self.depth, self.width = depth, width
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        widths = [[width * 2**i * EXPANSION] * n for i, n in enumerate(LAYOUTS[depth])]
        self.build_body(width, widths, (1, 2, 2, 2), num_classes, prefix="layer")

    def make_block(self, stage: int, in_planes: int, out_planes: int, stride: int) -> Bottleneck:
        """A bottleneck of width out_planes / 4; the projection is ``downsample``, torchvision's
        name, so its weights load."""
        return Bottleneck(in_planes, out_planes // EXPANSION, out_planes, stride,
                          shortcut_name="downsample")

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, 3, stride=2, padding=1)


register_configs(
    ResNet, r"resnet-(\d+)-w(\d+)",
    f"resnet-D-wW with D in {', '.join(map(str, LAYOUTS))} and base width W (64 as torchvision)",
    model_name, check_config, named=[(depth, 64) for depth in NAMED_DEPTHS],
)
