"""ResNeXt, PyramidNet and ResNet-50 primary networks, and ImageNet-style augmentation."""

import copy
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn
from torch.func import functional_call
from torchvision.transforms.v2 import functional as TF

from pyro_implicit.inference.data import Normalizer, load_data
from pyro_implicit.inference.images import random_resized_boxes, random_resized_crop
from pyro_implicit.models import (
    PyramidNet,
    ResNet,
    ResNeXt,
    StagedNetwork,
    create_model,
    list_models,
    model_help,
)

SMALL = ["resnext-11-2x4d", "resnext-20-2x4d", "pyramidnet-20-24", "pyramidnet-14-7",
         "resnet-14-w8", "resnet-26-w4"]
STEM_AND_HEAD = {"stem.weight", "conv1.weight", "fc.weight"}


def n_params(name, **kwargs):
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, **kwargs).parameters())


@pytest.mark.parametrize("name, classes, published", [
    ("resnext-29-8x64d", 10, 34.4e6),      # Xie et al. 2017, Table 7
    ("resnext-29-16x64d", 10, 68.1e6),
    ("resnet-50", 1000, 25.6e6),           # He et al. 2016
])
def test_parameter_counts_match_published(name, classes, published):
    assert abs(n_params(name, num_classes=classes) - published) / published < 0.01


@pytest.mark.parametrize("name, classes, exact", [
    # the authors' code (Lua and PyTorch) builds these; the paper rounds them to 1.7M, 3.8M and
    # 28.3M, so 110-48 lies 4.3% above its published figure
    ("pyramidnet-110-48", 10, 1_772_706),
    ("pyramidnet-110-84", 10, 3_904_446),
    ("pyramidnet-110-270", 10, 28_485_477),
    ("resnext-29-16x64d", 100, 68_247_460),
    ("resnext-29-32x4d", 10, 4_775_754),
    ("resnet-50", 1000, 25_557_032),       # torchvision's resnet50
    ("resnet-101", 1000, 44_549_160),
    ("resnet-152", 1000, 60_192_808),
])
def test_parameter_counts_match_reference_code_exactly(name, classes, exact):
    assert n_params(name, num_classes=classes) == exact


def test_resnet50_has_torchvision_names_and_shapes():
    with torch.device("meta"):
        ours = create_model("resnet-50", num_classes=1000).state_dict()
        theirs = torchvision.models.resnet50().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_named_configs_and_family_templates_registered():
    help_text = model_help()
    for name in ("resnext-29-8x64d", "pyramidnet-110-48", "resnet-50", "wrn-28-10"):
        assert name in help_text
    for template in ("resnext-D-CxWd with D = 9n+2", "pyramidnet-D-A with D = 6n+2",
                     "resnet-D-wW with D in 14, 26, 38, 50, 101, 152"):
        assert template in help_text
    assert isinstance(create_model("resnext-29-2x32d"), ResNeXt)
    assert isinstance(create_model("pyramidnet-110-48"), PyramidNet)
    assert isinstance(create_model("resnet-14-w8"), ResNet)


@pytest.mark.parametrize("bad, words", [
    ("resnext-30-8x64d", ["resnext-30-8x64d", "9n+2"]),
    ("resnext-29-0x64d", ["resnext-29-0x64d", "cardinality"]),
    ("resnext-29-8x0d", ["resnext-29-8x0d", "width"]),
    ("pyramidnet-111-48", ["pyramidnet-111-48", "6n+2"]),
    ("resnet-51-w8", ["resnet-51-w8", "14, 26, 38, 50, 101, 152"]),
    ("resnet-50-w0", ["resnet-50-w0", "width"]),
    ("resnet-51", ["resnet-51", "resnet-50", "resnet-D-wW"]),
])
def test_bad_names_give_clear_errors(bad, words):
    with pytest.raises(ValueError) as err:
        create_model(bad)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("name", ["resnext-11-2x4d", "pyramidnet-20-24", "resnet-14-w8"])
def test_drop_rate_refused_by_networks_without_dropout(name):
    create_model(name, drop_rate=0.0)
    with pytest.raises(ValueError) as err:
        create_model(name, drop_rate=0.3)
    assert name in str(err.value) and "drop_rate" in str(err.value)


def conv_order(net, x):
    """Names of the conv kernels in the order the forward pass applies them."""
    order = []
    hooks = [m.register_forward_hook(lambda *_, n=name: order.append(f"{n}.weight"))
             for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    net(x)
    for h in hooks:
        h.remove()
    return order


@pytest.mark.parametrize("name", SMALL)
def test_residual_blocks_contract(name):
    net = create_model(name, num_classes=5, in_channels=1)
    blocks = net.residual_blocks()
    convs = {n + ".weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    listed = [p for names in blocks.values() for p in names]
    assert len(listed) == len(set(listed))
    assert set(listed) == convs - STEM_AND_HEAD
    assert not set(listed) & STEM_AND_HEAD
    for block_name, names in blocks.items():
        block = net.get_submodule(block_name)
        inside = [f"{block_name}.{n}.weight" for n, m in block.named_modules()
                  if isinstance(m, nn.Conv2d)]
        assert sorted(inside) == sorted(names)  # every conv of the block, shortcuts included
        for p in names:
            assert p.startswith(block_name + ".")
            assert net.get_parameter(p).dim() == 4
    # forward order, block by block
    order = [p for p in conv_order(net, torch.randn(2, 1, 8, 8)) if p in set(listed)]
    assert order == listed


@pytest.mark.parametrize("name", [*list_models(), "wrn-10-1", *SMALL])
def test_every_family_is_a_staged_network_declaring_its_conv_kernels(name):
    with torch.device("meta"):
        net = create_model(name)
    assert isinstance(net, StagedNetwork)
    convs = {n + ".weight" for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    listed = [p for names in net.residual_blocks().values() for p in names]
    assert listed and len(listed) == len(set(listed)) and set(listed) <= convs


def test_projection_shortcuts_are_generated():
    resnext = create_model("resnext-11-2x4d").residual_blocks()
    assert resnext["stage1.0"][-1] == "stage1.0.shortcut.0.weight"  # 64 -> 256 channels
    resnet = create_model("resnet-26-w4").residual_blocks()
    assert [b for b, names in resnet.items() if any("downsample" in n for n in names)] == [
        "layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    assert all(len(names) == 3 for b, names in resnet.items() if not b.endswith(".0"))


def test_pyramidnet_widths_grow_every_block_and_shortcuts_hold_no_conv():
    net = create_model("pyramidnet-20-24")
    blocks = net.residual_blocks()
    assert all(len(names) == 2 for names in blocks.values())
    widths = [net.get_parameter(names[0]).shape[0] for names in blocks.values()]
    assert widths == sorted(set(widths)) and widths[-1] == 16 + 24
    assert net.fc.in_features == 40


@pytest.mark.parametrize("name", SMALL)
def test_every_block_is_fx_traceable(name):
    net = create_model(name, num_classes=5).eval()
    inputs = {}
    hooks = [net.get_submodule(b).register_forward_pre_hook(
        lambda _, args, b=b: inputs.setdefault(b, args[0])) for b in net.residual_blocks()]
    net(torch.randn(2, 3, 16, 16))
    for h in hooks:
        h.remove()
    for block_name, names in net.residual_blocks().items():
        block = net.get_submodule(block_name)
        traced = torch.fx.symbolic_trace(block)
        called = {f"{block_name}.{n.target}.weight" for n in traced.graph.nodes
                  if n.op == "call_module"}
        assert set(names) <= called
        x = inputs[block_name]
        assert torch.allclose(traced(x), block(x))


@pytest.mark.parametrize("name", SMALL)
def test_functional_call_with_kernels_removed_reproduces_forward(name):
    torch.manual_seed(0)
    net = create_model(name, num_classes=5, in_channels=1).eval()
    x = torch.randn(2, 1, 8, 8)
    expected = net(x)
    stripped = copy.deepcopy(net)
    kernels = {}
    for names in net.residual_blocks().values():
        for p in names:
            kernels[p] = net.get_parameter(p).detach().clone()
            module_name, _, leaf = p.rpartition(".")
            delattr(stripped.get_submodule(module_name), leaf)
    assert not set(kernels) & {n for n, _ in stripped.named_parameters()}
    out = functional_call(stripped, kernels, (x,), strict=False, tie_weights=False)
    assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("name, size", [
    ("resnext-11-2x4d", 8), ("pyramidnet-20-24", 8), ("pyramidnet-14-7", 9),
    ("resnet-14-w8", 8), ("resnet-50-w8", 32),
])
def test_small_inputs(name, size):
    net = create_model(name, num_classes=7, in_channels=3)
    out = net(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnext-11-2x4d", "pyramidnet-20-24", "resnet-14-w8"])
def test_reset_parameters_standard_init(name):
    torch.manual_seed(0)
    net = create_model(name)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # the last BN of each branch included: not zeroed
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    big = max((m for m in net.modules() if isinstance(m, nn.Conv2d)),
              key=lambda m: m.weight.numel())
    fan_out = big.out_channels // big.groups * big.kernel_size[0] * big.kernel_size[1]
    assert abs(big.weight.std().item() / math.sqrt(2 / fan_out) - 1) < 0.1


# ImageNet-style augmentation

def test_random_resized_boxes_follow_torchvision_ranges():
    boxes = random_resized_boxes(4000, 256, 256, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 256).all() and (left + w <= 256).all()
    area = (h * w).float() / 256**2
    assert area.min() > 0.07 and area.max() <= 1 and area.mean() > 0.4
    aspect = w.float() / h
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert len(set(top.tolist())) > 100
    # a strip no try fits: torchvision's fallback, the central crop clamped to ratio 4/3
    strip = random_resized_boxes(5, 10, 300, torch.Generator().manual_seed(0))
    assert strip.tolist() == [[0, 143, 10, 13]] * 5


def test_imagenet_augmentation_is_a_resized_crop_or_its_mirror():
    x = torch.randint(0, 256, (16, 3, 256, 256), dtype=torch.uint8)
    norm = Normalizer([0.0] * 3, [1 / 255] * 3, flip=True, augment="imagenet")
    out = norm(x, torch.Generator().manual_seed(3))
    assert out.shape == (16, 3, 224, 224)
    g = torch.Generator().manual_seed(3)
    boxes = random_resized_boxes(16, 256, 256, g).tolist()
    flips = (torch.rand(16, generator=g) < 0.5).tolist()
    assert 0 < sum(flips) < 16
    for img, src, box, flip in zip(out, x, boxes, flips, strict=True):
        crop = TF.resized_crop(src, *box, [224, 224], antialias=True)
        assert torch.equal(img, (crop.flip(-1) if flip else crop).float())


def test_imagenet_augmentation_varies_with_the_generator():
    x = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    norm = Normalizer([0.5] * 3, [0.25] * 3, flip=True, augment="imagenet")
    a = norm(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, norm(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, norm(x, torch.Generator().manual_seed(1)))
    crops = random_resized_crop(x, 224, torch.Generator().manual_seed(0))
    assert crops.shape == (4, 3, 224, 224) and crops.dtype == torch.uint8


def test_imagenet_test_pipeline_is_a_deterministic_center_crop():
    norm = Normalizer([0.0] * 3, [1 / 255] * 3, flip=True, augment="imagenet")
    train = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    assert torch.equal(norm(train), train[..., 16:240, 16:240].float())
    assert torch.equal(norm(train), norm(train))
    test = train[..., 16:240, 16:240]
    assert torch.equal(norm(test), test.float())
    with pytest.raises(ValueError, match="pad-crop, imagenet"):
        Normalizer([0.0], [1.0], augment="random")


def write_folder(root, sizes):
    """train/ and test/ with the same images: two classes, one image per (width, height)."""
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for k, (w, h) in enumerate(sizes):
                array = np.random.default_rng(k + 10 * (c == "b")).integers(
                    0, 256, (h, w, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / c / f"{k}.png")


def test_auto_augment_picks_imagenet_for_large_images(tmp_path):
    write_folder(tmp_path, [(72, 90), (100, 80)])  # mixed sizes, shorter side > 64
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.augment == "imagenet" and data.flip and data.pad == 0
    assert data.train_x.shape == (4, 3, 256, 256) and data.test_x.shape == (4, 3, 224, 224)
    # un-augmented training images go through exactly the test pipeline
    norm = Normalizer([0.0] * 3, [1 / 255] * 3, augment=data.augment)
    assert torch.equal(norm(data.train_x), norm(data.test_x))
    img = Image.open(tmp_path / "test" / "a" / "0.png").convert("RGB")
    expected = TF.pil_to_tensor(TF.center_crop(TF.resize(img, [256]), [224]))
    assert torch.equal(data.test_x[0], expected)


def test_auto_augment_keeps_pad_crop_for_small_images(tmp_path):
    write_folder(tmp_path, [(32, 32)])
    data = load_data(f"imagefolder:{tmp_path}")
    assert data.augment == "pad-crop" and data.pad == 4
    assert data.train_x.shape == (2, 3, 32, 32)
    forced = load_data(f"imagefolder:{tmp_path}", augment="imagenet")
    assert forced.augment == "imagenet" and forced.test_x.shape == (2, 3, 224, 224)
    assert load_data("digits", augment="pad-crop").augment == "pad-crop"


def test_augment_choice_is_validated():
    with pytest.raises(ValueError) as err:
        load_data("digits", augment="randaug")
    assert "randaug" in str(err.value) and "auto, pad-crop, imagenet" in str(err.value)
    with pytest.raises(ValueError, match="imagefolder"):
        load_data("digits", augment="imagenet")
