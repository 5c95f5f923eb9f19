import pytest
import torch

from pyro_implicit.models import WideResNet, create_model, list_models


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name, published", [("wrn-28-10", 36.5e6), ("wrn-16-4", 2.75e6)])
def test_parameter_counts_match_published(name, published):
    assert abs(n_params(create_model(name)) - published) / published < 0.01


def test_named_configs_registered():
    for name in ("wrn-16-1", "wrn-16-2", "wrn-16-4", "wrn-16-8", "wrn-28-1", "wrn-28-4",
                 "wrn-28-10"):
        assert name in list_models()


def test_any_valid_depth_and_width_builds():
    net = create_model("wrn-22-3", num_classes=7, in_channels=1)
    assert isinstance(net, WideResNet)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    assert len(net.residual_blocks()) == 3 * 3


@pytest.mark.parametrize("bad, words", [
    ("wrn-15-2", ["wrn-15-2", "6n+4"]),
    ("wrn-16-0", ["wrn-16-0", "width"]),
    ("resnet-9000", ["resnet-9000", "wrn-16-2", "wrn-D-K"]),
])
def test_bad_model_names_give_clear_errors(bad, words):
    with pytest.raises(ValueError) as err:
        create_model(bad)
    for word in words:
        assert word in str(err.value)


def test_residual_blocks_declare_exactly_the_block_convs():
    net = create_model("wrn-16-2")
    blocks = net.residual_blocks()
    assert list(blocks) == [f"stage{s}.{b}" for s in (1, 2, 3) for b in (0, 1)]
    names = [n for names in blocks.values() for n in names]
    convs = {n + ".weight" for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(names) == convs - {"stem.weight"}
    # 1x1 projections exactly where the shape changes: every stage's first block
    assert [n for n in names if "shortcut" in n] == [
        "stage1.0.shortcut.weight", "stage2.0.shortcut.weight", "stage3.0.shortcut.weight"]
    for block, members in blocks.items():
        assert all(n.startswith(block + ".") for n in members)


def test_preactivation_block_structure():
    net = create_model("wrn-16-1")
    block = net.stage2[0]
    assert block.conv1.stride == (2, 2) and block.shortcut.stride == (2, 2)
    assert block.conv1.in_channels == 16 and block.conv1.out_channels == 32
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)


def test_dropout_only_in_training():
    net = create_model("wrn-10-1", drop_rate=0.5)
    x = torch.randn(4, 3, 8, 8)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, net(x))
