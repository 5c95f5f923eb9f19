"""``residual_kernels``: the generated kernels of torchvision's and timm's ResNets, found
structurally, so that ``BayesianNetwork(net, N, generated=residual_kernels(net))`` is one line."""

from __future__ import annotations

import pyro
import pytest
import torch
import torchvision
from torch import nn

from pyro_implicit import (
    BayesianNetwork,
    ImplicitGuide,
    ImplicitMAP,
    freeze_posterior,
    model_average,
    residual_kernels,
)
from pyro_implicit.models import create_model

STAGES = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}


def _expected(layout: tuple[int, ...], convs: int, projections: bool = True) -> dict:
    """torchvision/timm names: layerS.J.convK, plus layerS.0's projection (``downsample.0``;
    every stage but a BasicBlock net's first has one)."""
    expected = {}
    for s, blocks in enumerate(layout, start=1):
        for j in range(blocks):
            names = [f"layer{s}.{j}.conv{k}.weight" for k in range(1, convs + 1)]
            if projections and j == 0 and (s > 1 or convs == 3):
                names.append(f"layer{s}.{j}.downsample.0.weight")
            expected[f"layer{s}.{j}"] = names
    return expected


def _meta(build):
    with torch.device("meta"):  # names and shapes only: no memory for the weights
        return build()


@pytest.mark.parametrize("name, layout, convs, conv2_shape", [
    ("resnet18", STAGES["resnet18"], 2, (64, 64, 3, 3)),
    ("resnet50", STAGES["resnet50"], 3, (64, 64, 3, 3)),
    ("wide_resnet50_2", STAGES["resnet50"], 3, (128, 128, 3, 3)),
    ("resnext50_32x4d", STAGES["resnet50"], 3, (128, 4, 3, 3)),  # 32 groups of 4 channels
])
def test_torchvision_families(name, layout, convs, conv2_shape):
    net = _meta(lambda: getattr(torchvision.models, name)(weights=None))
    blocks = residual_kernels(net)
    assert blocks == _expected(layout, convs)
    assert residual_kernels(net, projections=False) == _expected(layout, convs, False)
    model = BayesianNetwork(net, num_data=100, generated=blocks)
    shapes = {s.name: s.shape for s in model.sites}
    assert shapes["layer1.0.conv2.weight"] == conv2_shape
    # every conv but the stem is generated; the stem, BN and FC stay parameters
    left = [n for n, _ in model.net.named_parameters() if n.endswith("weight")]
    assert [n for n in left if "conv" in n or "downsample.0" in n] == ["conv1.weight"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_resnets(name):
    timm = pytest.importorskip("timm")
    net = _meta(lambda: timm.create_model(name, pretrained=False))
    assert isinstance(net, timm.models.resnet.ResNet)
    convs = 2 if name == "resnet18" else 3
    assert residual_kernels(net) == _expected(STAGES[name], convs)


@pytest.mark.parametrize("name", ["wrn-10-1", "resnext-11-2x4d", "pyramidnet-20-24",
                                  "resnet-14-w8"])
def test_same_kernels_as_the_networks_own_residual_blocks(name):
    net = create_model(name, num_classes=5)
    found, declared = residual_kernels(net), net.residual_blocks()
    assert list(found) == list(declared)
    assert {b: sorted(k) for b, k in found.items()} == {b: sorted(k) for b, k in declared.items()}
    if name == "wrn-10-1":  # forward order: the projection reads bn1's output before conv1
        assert found["stage2.0"] == ["stage2.0.shortcut.weight", "stage2.0.conv1.weight",
                                     "stage2.0.conv2.weight"]


def test_resnet18_end_to_end_with_an_implicit_guide():
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    model = BayesianNetwork(net, num_data=64, generated=residual_kernels(net))
    guide = ImplicitGuide(model, strategy="block-wise", z_dim=2, h_dim=2)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    svi = pyro.infer.SVI(model, guide, pyro.optim.SGD({"lr": 0.01}), loss=ImplicitMAP())
    assert torch.isfinite(torch.tensor(svi.step(x, y)))
    frozen = freeze_posterior(model, guide, 2, batches=lambda: [x])
    probs = model_average(model, frozen, x)
    assert probs.shape == (4, 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


class _Block(nn.Module):
    """A block named like torchvision's, with ``torch.add`` or without a shortcut at all."""

    def __init__(self, residual: bool):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.residual = residual

    def forward(self, x):
        out = self.conv2(torch.relu(self.conv1(x)))
        return torch.add(out, x) if self.residual else out


def test_generic_blocks_and_a_clear_error_without_any():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _Block(True), _Block(False), _Block(True))
    assert residual_kernels(net) == {"1": ["1.conv1.weight", "1.conv2.weight"],
                                     "3": ["3.conv1.weight", "3.conv2.weight"]}
    with pytest.raises(ValueError, match="found no residual blocks in Sequential.*generated"):
        residual_kernels(nn.Sequential(_Block(False), nn.Flatten()))


class _DataDependent(_Block):
    def forward(self, x):
        return self.conv2(self.conv1(x)) + x if x.sum() > 0 else x


def test_untraceable_candidates_are_reported():
    with pytest.raises(ValueError, match=r"cannot read the data flow of 0 \(_DataDependent\)"):
        residual_kernels(nn.Sequential(_DataDependent(True)))
