"""The Bayesian hypernetwork's training stability: bounded coupling log-scales (the cause of
the c10-10k divergence) and the flow's gradient-norm limit."""

import pytest
import torch
from pyro.distributions.transforms import affine_coupling
from pyro.distributions.transforms.utils import clamp_preserve_gradients

from conftest import tiny_batch
from pyro_implicit.bayes_hypernet import BoundedCouplingNet
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.methods import METHODS, build, validate
from pyro_implicit.inference.train import make_loss, make_optimizer, train_step


def tiny(**knobs):
    config = validate(TrainConfig(method="bayes-hypernet", model="wrn-10-1", flow_layers=2,
                                  flow_hidden=8, **knobs))
    return config, *build(config, num_classes=5, in_channels=3, num_data=64)


def test_bounded_log_scale_saturates_where_pyros_clamp_passes_the_gradient():
    torch.manual_seed(0)
    net = BoundedCouplingNet(6, 4, bound=2.0)
    x = torch.randn(5, 3)
    raw = torch.nn.functional.linear(torch.relu(net.layers[0](x)), net.layers[1].weight,
                                     net.layers[1].bias)[:, 3:]
    _, log_scale = net(x)
    assert torch.allclose(log_scale, 2.0 * torch.tanh(raw / 2.0), atol=1e-6)
    # near 0 the bound is the identity (the couplings start at the identity) ...
    small = torch.tensor([1e-3], requires_grad=True)
    (2.0 * torch.tanh(small / 2.0)).backward()
    assert small.grad.item() == pytest.approx(1.0, abs=1e-6)
    # ... and far out its gradient vanishes, where the clamp's stays 1 (a clamped log-scale
    # that the KL's entropy keeps pushing: the divergence)
    far = torch.tensor([20.0], requires_grad=True)
    bounded = 2.0 * torch.tanh(far / 2.0)
    bounded.backward()
    assert bounded.item() <= 2.0 and far.grad.item() < 1e-7
    far.grad = None
    clamp_preserve_gradients(far, -5.0, 3.0).backward()
    assert far.grad.item() == 1.0


def test_bound_zero_is_pyros_coupling_exactly():
    torch.manual_seed(0)
    ours = BoundedCouplingNet(7, 5, bound=0.0)
    torch.manual_seed(0)
    pyros = affine_coupling(7, [5]).nn
    assert ours.state_dict().keys() == pyros.state_dict().keys()
    for key, value in pyros.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    x = torch.randn(4, 3)
    for a, b in zip(ours(x), pyros(x), strict=True):
        assert torch.equal(a, b)


def test_flow_log_scales_stay_within_the_bound_whatever_the_weights():
    _, _, guide = tiny(flow_scale_bound=1.5)
    with torch.no_grad():
        for p in guide.couplings.parameters():
            p.normal_(0, 30.0)  # far from the identity start
    raw = []
    for coupling in guide.couplings:
        coupling.nn.register_forward_hook(lambda m, i, o: raw.append(o[1]))
    g = guide.weights(guide.sample_latent())["scales"]
    assert torch.isfinite(g).all()
    assert max(r.abs().max().item() for r in raw) <= 1.5


@pytest.mark.parametrize("max_norm", [0.0, 1e-3])
def test_flow_gradients_are_limited_to_flow_grad_norm(max_norm):
    config, model, guide = tiny(flow_grad_norm=max_norm)
    clip = METHODS["bayes-hypernet"].clip(config, guide)
    if not max_norm:
        assert clip is None
        return
    params, norm = clip
    assert norm == max_norm and {id(p) for p in params} == {id(p) for p in guide.parameters()}
    optimizer = make_optimizer(config, model, guide)
    x, y = tiny_batch(16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_step(model, guide, make_loss(config), optimizer, x, y, clip=clip)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params
                                                  if p.grad is not None]))
    assert total <= max_norm * (1 + 1e-4)
    # the model's own parameters (the point network's) are not limited
    moved = max((p.detach() - before[n]).abs().max().item()
                for n, p in model.named_parameters())
    assert moved > 10 * config.lr * max_norm


@pytest.mark.parametrize("knob, value", [("flow_scale_bound", -1.0), ("flow_scale_bound", 4.0),
                                         ("flow_grad_norm", -0.5)])
def test_bad_flow_knobs_are_refused(knob, value):
    with pytest.raises(ValueError, match=knob):
        validate(TrainConfig(method="bayes-hypernet", **{knob: value}))
