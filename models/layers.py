"""Pieces the networks share: the bottleneck block, weight initialisation and the kernel lists
that ``residual_blocks`` declares."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride, groups)-BN-ReLU-conv1x1-BN, plus identity or 1x1
    projection + BN, then ReLU: torchvision's ResNet v1.5 (stride on the 3x3) and, grouped,
    ResNeXt's block. The projection is the attribute ``shortcut_name``, so each network keeps
    its reference's state-dict names."""

    def __init__(self, in_planes: int, width: int, out_planes: int, stride: int, groups: int = 1,
                 shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut_name = shortcut_name
        projection = None
        if stride != 1 or in_planes != out_planes:
            projection = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        setattr(self, shortcut_name, projection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(self.conv1(x)))
        o = F.relu(self.bn2(self.conv2(o)))
        o = self.bn3(self.conv3(o))
        projection = getattr(self, self.shortcut_name)
        identity = x if projection is None else projection(x)
        return F.relu(o + identity)


def init_weights(net: nn.Module,
                 init_linear: Callable[[nn.Linear], None] = nn.Linear.reset_parameters) -> None:
    """He-normal (fan_out, ReLU) convs and unit-scale, zero-shift BNs, the initialisation every
    network here shares; Linear layers by ``init_linear`` (PyTorch's default unless given)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            init_linear(m)


def default_weight_zero_bias(m: nn.Linear) -> None:
    """PyTorch's default Linear weight with a zero bias (the ResNeXt and PyramidNet references)."""
    m.reset_parameters()
    nn.init.zeros_(m.bias)


def stage_kernels(net: nn.Module, stage_names: Iterable[str]) -> dict[str, list[str]]:
    """Block name (``stage.j``) -> names of the conv kernels inside it, projections included, in
    the order the block declares them: ``residual_blocks`` of a network built of stages."""
    blocks: dict[str, list[str]] = {}
    for stage_name in stage_names:
        for j, block in enumerate(net.get_submodule(stage_name)):
            prefix = f"{stage_name}.{j}"
            blocks[prefix] = [f"{prefix}.{n}.weight" for n, m in block.named_modules()
                              if isinstance(m, nn.Conv2d)]
    return blocks
