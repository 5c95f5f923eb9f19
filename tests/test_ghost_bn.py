"""Ghost BatchNorm (``bn_groups``): the MAP objective's batch run in groups with their own
BatchNorm statistics, the control that tells the K-draw groups' smaller BatchNorm batches
from the effect of their K draws (fused SGD with it: test_hypernet_options)."""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_batch, tiny_model
from pyro_implicit import BayesianNetwork, ImplicitMAP, PointGuide
from pyro_implicit.inference.cli import build_parser
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.methods import validate
from pyro_implicit.inference.train import make_loss
from pyro_implicit.models import create_model


def _loss(loss_fn, model, guide, x, y, seed=5):
    pyro.set_rng_seed(seed)
    return loss_fn.loss_and_logits(model, guide, x, y)


def _draws_over_parts(model, guide, x, y, parts, draws):
    """The expected (loss, logits): ``parts`` groups run alone, consecutive ones sharing one of
    ``draws`` draws, taken from the same seed as :func:`_loss`."""
    pyro.set_rng_seed(5)
    weights = [guide.weights(pyro.sample("z", guide.z_distribution())) for _ in range(draws)]
    logits = torch.cat([model.logits(xs, weights[i * draws // parts])
                        for i, xs in enumerate(x.tensor_split(parts))])
    return F.cross_entropy(logits, y), logits


def test_bn_groups_give_each_group_its_own_statistics_under_one_draw():
    model, guide = tiny_model()
    x, y = tiny_batch(12)
    loss, logits = _loss(ImplicitMAP(0.0, bn_groups=3), model, guide, x, y)
    expected, expected_logits = _draws_over_parts(model, guide, x, y, parts=3, draws=1)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    whole, _ = _loss(ImplicitMAP(0.0), model, guide, x, y)  # statistics over all 12
    assert not torch.allclose(loss, whole, atol=1e-4)


def test_draws_share_consecutive_bn_groups():
    model, guide = tiny_model()
    x, y = tiny_batch(16)
    loss, logits = _loss(ImplicitMAP(0.0, draws=2, bn_groups=4), model, guide, x, y)
    expected, expected_logits = _draws_over_parts(model, guide, x, y, parts=4, draws=2)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(logits, expected_logits, atol=1e-6)
    # G = K is the draws' own grouping
    same = _loss(ImplicitMAP(0.0, draws=2, bn_groups=2), model, guide, x, y)[0]
    assert same.item() == pytest.approx(_loss(ImplicitMAP(0.0, draws=2), model, guide, x, y)[0]
                                        .item(), rel=1e-6)


def test_a_point_estimate_with_bn_groups_is_ghost_batchnorm():
    torch.manual_seed(0)
    net = create_model("wrn-10-1", num_classes=5, in_channels=3)
    model = BayesianNetwork(net, num_data=64, generated={})
    x, y = tiny_batch(12)
    loss, _ = ImplicitMAP(0.0, bn_groups=4).loss_and_logits(model, PointGuide(), x, y)
    expected = sum(F.cross_entropy(net(xs), ys) for xs, ys in
                   zip(x.tensor_split(4), y.tensor_split(4), strict=True)) / 4
    assert torch.allclose(loss, expected, atol=1e-6)
    assert not torch.allclose(loss, F.cross_entropy(net(x), y), atol=1e-4)


def test_mixture_runs_each_draw_in_bn_groups():
    model, guide = tiny_model()
    x, y = tiny_batch(8)
    loss, _ = _loss(ImplicitMAP(0.0, draws=3, mode="mixture", bn_groups=2), model, guide, x, y)
    pyro.set_rng_seed(5)
    per_draw = []
    for _ in range(3):
        w = guide.weights(pyro.sample("z", guide.z_distribution()))
        logits = torch.cat([model.logits(xs, w) for xs in x.tensor_split(2)])
        per_draw.append(torch.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1))
    expected = -(torch.logsumexp(torch.stack(per_draw), 0) - math.log(3)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_bad_bn_groups_are_refused_in_one_line():
    with pytest.raises(ValueError, match=r"bn_groups \(2\) must be 1 or a multiple of draws"):
        ImplicitMAP(0.0, draws=4, bn_groups=2)
    with pytest.raises(ValueError, match="bn_groups must be a positive integer"):
        ImplicitMAP(0.0, bn_groups=0)
    with pytest.raises(ValueError, match="bbb does not train by the MAP objective.*map, mle"):
        validate(TrainConfig(method="bbb", bn_groups=2))
    with pytest.raises(ValueError, match=r"bn_groups must be an integer in 1\.\.1024"):
        validate(TrainConfig(method="map", bn_groups=0))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--bn-groups", "0"])
    args = build_parser().parse_args(["train", "--method", "map", "--bn-groups", "4"])
    assert args.bn_groups == 4 and TrainConfig().bn_groups == 1
    assert make_loss(validate(TrainConfig(method="map", bn_groups=4))).bn_groups == 4
