import subprocess
import sys
import textwrap

import pyro
import pytest
import torch
from pyro.infer import Predictive

from conftest import tiny_batch, tiny_model
from pyro_implicit import (
    FrozenPosterior,
    freeze_posterior,
    model_average,
    predict_probs,
    recalibrate_bn,
)
from pyro_implicit.model import batchnorm_layers


def data_batches(n=30, size=7, seed=2):
    x, _ = tiny_batch(n, seed=seed)
    return x, lambda: iter(x.split(size))


def sample_net(model, guide):
    return model.materialize(guide.weights(guide.sample_latent()))


def bn_inputs(net, x):
    """Reference: the input of every BN layer in a train-mode forward of ``x`` (one batch)."""
    seen = {}
    hooks = [bn.register_forward_pre_hook(lambda m, i, n=name: seen.__setitem__(n, i[0]))
             for name, bn in batchnorm_layers(net)]
    net.train()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def test_first_bn_statistics_equal_direct_computation_across_batches():
    model, guide = tiny_model()
    net = sample_net(model, guide)
    x, batches = data_batches()
    stats = recalibrate_bn(net, batches())
    with torch.no_grad():
        h = net.stem(x)  # the first BN's input does not depend on any other BN
    mean = h.double().mean((0, 2, 3))
    var = h.double().transpose(0, 1).flatten(1).var(1)  # unbiased
    bn = net.stage1[0].bn1
    assert torch.allclose(stats["stage1.0.bn1.running_mean"].double(), mean, atol=1e-5)
    assert torch.allclose(stats["stage1.0.bn1.running_var"].double(), var, rtol=1e-4)
    assert torch.equal(bn.running_mean, stats["stage1.0.bn1.running_mean"])
    assert bn.num_batches_tracked.item() == 5


def test_all_bn_statistics_equal_reference_for_one_batch():
    model, guide = tiny_model()
    net = sample_net(model, guide)
    x, _ = data_batches()
    ref = bn_inputs(net, x)
    net.eval()
    stats = recalibrate_bn(net, [x])
    assert not net.training  # mode restored
    for name, inp in ref.items():
        d = inp.double()
        assert torch.allclose(stats[f"{name}.running_mean"].double(), d.mean((0, 2, 3)),
                              atol=1e-5)
        assert torch.allclose(stats[f"{name}.running_var"].double(),
                              d.transpose(0, 1).flatten(1).var(1), rtol=1e-4, atol=1e-6)


def test_num_batches_limits_the_pass_and_dropout_is_off():
    model, guide = tiny_model()
    net = sample_net(model, guide)
    x, batches = data_batches()
    limited = recalibrate_bn(net, batches(), num_batches=2)
    first_two = recalibrate_bn(net, list(x.split(7))[:2])
    for k in limited:
        assert torch.equal(limited[k], first_two[k])
    net.stage1[0].drop_rate = 0.9  # dropout must not disturb the statistics
    again = recalibrate_bn(net, list(x.split(7))[:2])
    for k in limited:
        assert torch.allclose(limited[k], again[k])
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_bn(net, batches(), num_batches=0)


def test_frozen_samples_carry_their_own_recalibrated_statistics():
    model, guide = tiny_model()
    x, batches = data_batches()
    frozen = freeze_posterior(model, guide, 3, batches)
    assert len(frozen) == 3 and frozen.latents.shape == (3, 1, 4)
    for i in range(3):
        tensors = frozen.sample_weights(i)
        ref = recalibrate_bn(model.materialize(guide.weights(frozen.latents[i])), batches())
        for name in model.bn_sites:
            assert torch.allclose(tensors[name], ref[name], atol=1e-6)
    name = model.bn_sites[-1]
    assert not torch.allclose(frozen.bn_stats[name][0], frozen.bn_stats[name][1])


def explicit_average(model, frozen, x):
    probs = []
    for i in range(len(frozen)):
        net = model.materialize(frozen.sample_weights(i)).eval()
        with torch.no_grad():
            probs.append(net(x).softmax(-1))
    return torch.stack(probs)


@pytest.mark.parametrize("strategy", ["all-in-one", "layer-wise"])
def test_predictive_average_equals_explicit_loop(strategy):
    model, guide = tiny_model(strategy)
    x, batches = data_batches()
    frozen = freeze_posterior(model, guide, 5, batches)
    ref = explicit_average(model, frozen, x)
    model.eval()
    logits = Predictive(model, guide=frozen, num_samples=5, return_sites=["logits"])(x)["logits"]
    probs = logits.reshape(5, len(x), -1).softmax(-1)
    # Predictive visits every frozen sample once (its order may be rotated)
    assert torch.allclose(probs.mean(0), ref.mean(0), atol=1e-6)
    assert torch.allclose(predict_probs(model, frozen, x), ref, atol=1e-6)
    assert torch.allclose(model_average(model, frozen, x), ref.mean(0), atol=1e-6)
    # kernels are generated once per sample and regenerated when theta changes
    with torch.no_grad():
        guide.hypernet.output.mul_(2)
    assert not torch.allclose(predict_probs(model, frozen, x), ref, atol=1e-3)


def test_averaging_leaves_running_statistics_and_mode_untouched():
    model, guide = tiny_model()
    x, batches = data_batches()
    model.train()
    before = {k: v.clone() for k, v in model.net.named_buffers()}
    frozen = freeze_posterior(model, guide, 3, batches)
    model_average(model, frozen, x)
    Predictive(model, guide=frozen, num_samples=3, return_sites=["logits"])  # construction only
    assert model.training and model.net.training
    for k, v in model.net.named_buffers():
        assert torch.equal(v, before[k]), k


def test_state_dicts_restore_theta_parameters_and_bn_buffers():
    model, guide = tiny_model()
    x, batches = data_batches()
    svi_x, svi_y = tiny_batch(16)
    from pyro_implicit import ImplicitMAP

    opt = torch.optim.SGD(list(model.parameters()) + list(guide.parameters()), lr=0.1)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        ImplicitMAP()(model, guide, svi_x, svi_y).backward()
        opt.step()
    frozen = freeze_posterior(model, guide, 2, batches)
    expected = model_average(model, frozen, x)
    state = {"model": model.state_dict(), "guide": guide.state_dict()}
    assert any("running_mean" in k for k in state["model"])
    pyro.clear_param_store()
    model2, guide2 = tiny_model()
    model2.load_state_dict(state["model"])
    guide2.load_state_dict(state["guide"])
    frozen2 = FrozenPosterior(guide2, frozen.latents, frozen.bn_stats)
    assert torch.allclose(model_average(model2, frozen2, x), expected, atol=1e-6)
    for k, v in model.net.named_buffers():
        assert torch.equal(v, dict(model2.net.named_buffers())[k])


def test_without_recalibration_the_trained_statistics_are_used():
    model, guide = tiny_model()
    x, _ = data_batches()
    frozen = freeze_posterior(model, guide, 2, None)
    for name, value in model.net.named_buffers():
        if name in frozen.bn_stats:
            assert torch.equal(frozen.bn_stats[name][1], value)


MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys, torch, pyro
    from pyro_implicit import BayesianNetwork, ImplicitGuide, FrozenPosterior, model_average
    from pyro_implicit.models import create_model
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    n = int(sys.argv[1])
    model = BayesianNetwork(create_model("wrn-10-8", num_classes=3), num_data=10)
    guide = ImplicitGuide(model, z_dim=2, h_dim=1)   # theta small, kernels 4.9M floats = 20 MB
    latents = torch.stack([guide.sample_latent() for _ in range(n)])
    stats = {k: v.expand(n, *v.shape).clone() for k, v in model.net.named_buffers()
             if k in model.bn_sites}
    frozen = FrozenPosterior(guide, latents, stats)
    x = torch.randn(2, 3, 4, 4)
    model_average(model, frozen, x)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(base)
""")


def test_averaging_memory_does_not_grow_with_n(tmp_path):
    script = tmp_path / "mem.py"
    script.write_text(MEMORY_SCRIPT)

    def peak_kb(n):
        out = subprocess.run([sys.executable, str(script), str(n)], capture_output=True,
                             text=True, check=True, cwd=tmp_path)
        return int(out.stdout.split()[-1])

    small, large = peak_kb(2), peak_kb(24)
    # stacking 24 weight sets would add ~440 MB; one weight set at a time adds ~nothing
    assert (large - small) / 1024 < 100, (small, large)
