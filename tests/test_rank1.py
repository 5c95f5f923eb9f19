"""The rank-1 generator: a shared kernel times per-channel factors of z (BatchEnsemble-like)."""

import pyro
import pytest
import torch

from conftest import tiny_batch
from pyro_implicit import BayesianNetwork, ImplicitGuide, freeze_posterior, load, save
from pyro_implicit.hypernet import GENERATORS, HyperNetworks, Rank1HyperNetworks
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.methods import build, validate
from pyro_implicit.inference.recipes import hypernet_label
from pyro_implicit.inference.train import make_loss, make_optimizer, train_step
from pyro_implicit.models import create_model

SHAPES = [(6, 4, 3, 3), (5, 6, 1, 1)]


def test_kernel_is_the_shared_kernel_times_the_outer_product_of_the_factors():
    torch.manual_seed(0)
    gen = Rank1HyperNetworks(SHAPES, z_dim=3, h_dim=5)
    z = torch.rand(2, 3)
    kernels = gen(z)
    for i, ((out, inp, kh, kw), w) in enumerate(zip(SHAPES, kernels, strict=True)):
        u = torch.relu(gen.hidden[i] @ z[i])
        u = u / u.square().mean().sqrt()
        factors = 1 + gen.output.split(gen.channels)[i] @ u
        r, s = factors[:out], factors[out:]
        shared = gen.kernel.split(gen.sizes)[i].view(out, inp, kh, kw)
        expected = torch.einsum("oikl,o,i->oikl", shared, r, s)
        torch.testing.assert_close(w, expected)
    # the factors are invariant to z's scale (the hidden layer is normalised)
    for a, b in zip(kernels, gen(7.5 * z), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="expected z of shape"):
        gen(torch.rand(3, 3))


def test_init_perturbs_the_factors_by_about_factor_std_and_the_kernels_are_he():
    torch.manual_seed(1)
    gen = Rank1HyperNetworks([(256, 128, 3, 3)], z_dim=16, h_dim=64, factor_std=0.5)
    perturbations = torch.stack([gen.output @ (u / u.square().mean().sqrt())
                                 for u in torch.relu(gen.hidden[0] @ torch.randn(16, 200)).T])
    assert perturbations.mean().abs() < 0.05
    assert perturbations.std().item() == pytest.approx(0.5, rel=0.1)
    fan_out = 256 * 9  # kaiming normal, fan_out, relu: std sqrt(2 / fan_out)
    assert gen.kernel.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)


def test_generator_parameters_are_small_and_gradients_reach_every_one():
    net = create_model("wrn-10-1", num_classes=5)
    model = BayesianNetwork(net, num_data=64)
    full = ImplicitGuide(model, z_dim=4, h_dim=6)
    rank1 = ImplicitGuide(model, z_dim=4, h_dim=6, generator="rank1")
    assert isinstance(full.hypernet, HyperNetworks)
    assert isinstance(rank1.hypernet, Rank1HyperNetworks)
    generated = sum(torch.Size(s.shape).numel() for s in model.sites)
    assert rank1.hypernet.kernel.numel() == generated  # one shared kernel per layer
    assert sum(p.numel() for p in rank1.parameters()) < 1.2 * generated
    assert sum(p.numel() for p in full.parameters()) > 6 * generated  # h_dim per weight
    x, y = tiny_batch(8, classes=5)
    loss = make_loss(validate(TrainConfig(generator="rank1", z_draws=1)))
    value, _ = loss.loss_and_logits(model, rank1, x, y)
    value.backward()
    for name, p in rank1.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_onehot_anchors_are_distinct_members_sharing_one_kernel():
    """With K anchors the rank-1 guide is a BatchEnsemble of K members."""
    net = create_model("wrn-10-1", num_classes=5)
    model = BayesianNetwork(net, num_data=64)
    guide = ImplicitGuide(model, prior="onehot", z_dim=4, h_dim=6, generator="rank1")
    name = guide.site_names[0]
    members = [guide.weights(torch.eye(4)[k].expand(guide.latent_shape))[name]
               for k in range(4)]
    for a in range(4):
        for b in range(a):
            cos = torch.nn.functional.cosine_similarity(members[a].flatten(),
                                                        members[b].flatten(), dim=0)
            assert 0.3 < cos < 0.98  # neither copies nor unrelated kernels
            ratio = members[a] / members[b]  # a rank-1 pattern of the same shared kernel
            assert torch.isfinite(ratio).all()


def test_rank1_trains_saves_and_loads_exactly(tmp_path):
    config = validate(TrainConfig(model="wrn-10-1", z_dim=4, h_dim=6, generator="rank1",
                                  prior="normal", z_draws=2))
    model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
    optimizer = make_optimizer(config, model, guide)
    loss_fn = make_loss(config)
    x, y = tiny_batch(16, classes=5)
    pyro.set_rng_seed(0)
    before = loss_fn.loss_and_logits(model, guide, x, y)[0].item()
    for _ in range(5):
        train_step(model, guide, loss_fn, optimizer, x, y)
    pyro.set_rng_seed(0)
    assert loss_fn.loss_and_logits(model, guide, x, y)[0].item() < before
    frozen = freeze_posterior(model, guide, 3, batches=lambda: [x])
    path = tmp_path / "rank1.pt"
    save(path, model, guide, frozen,
         architecture=("wrn-10-1", {"num_classes": 5}))
    model2, guide2, frozen2 = load(path)
    assert guide2.generator == "rank1" and isinstance(guide2.hypernet, Rank1HyperNetworks)
    z = guide.sample_latent()
    for name, w in guide.weights(z).items():
        torch.testing.assert_close(guide2.weights(z)[name], w)


def test_generator_is_checked_named_and_labelled(tmp_path, capsys):
    assert set(GENERATORS) == {"full", "rank1"}
    assert TrainConfig().generator == "full"
    with pytest.raises(ValueError, match="unknown generator 'lowrank'; choose one of: full, "
                                         "rank1"):
        validate(TrainConfig(generator="lowrank"))
    with pytest.raises(ValueError, match="theta_lr_scale scales the full generator"):
        validate(TrainConfig(generator="rank1", theta_lr_scale=0.5))
    assert hypernet_label(TrainConfig(generator="rank1", prior="onehot", z_draws=4)) == \
        "onehot, 4 z per step, rank1 generator"
    assert main(["train", "--generator", "lowrank", "--data", "digits",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "unknown generator 'lowrank'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--train-subset", "60", "--epochs", "1",
                 "--batch-size", "32", "--model", "wrn-10-1", "--z-dim", "4", "--h-dim", "4",
                 "--generator", "rank1", "--out", str(out)]) == 0
    assert TrainConfig.load(out / "config.json").generator == "rank1"
