"""The inference methods (map, mle, ensemble, bbb, bayes-hypernet, mc-dropout, hypernet): each
trains, samples and evaluates through the common interface."""

import json
import math
import os
import signal

import pyro
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import tiny_batch
from pyro_implicit import (
    BayesianNetwork,
    ImplicitMAP,
    freeze_posterior,
    model_average,
    predict_probs,
)
from pyro_implicit.bayes_hypernet import SCALES
from pyro_implicit.bbb import MeanFieldNormal
from pyro_implicit.dropout import SEED
from pyro_implicit.elbo import LocalReparameterization, WeightSpaceELBO
from pyro_implicit.inference import train as train_module
from pyro_implicit.inference.checkpoint import load_checkpoint
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.ensemble import member_config
from pyro_implicit.inference.methods import METHODS, build, kl_weight, validate
from pyro_implicit.inference.train import make_loss, make_optimizer, train_step
from pyro_implicit.models import create_model

POINT = {"map", "mle"}
TINY = ["--data", "digits", "--train-subset", "60", "--epochs", "1", "--batch-size", "32",
        "--model", "wrn-10-1", "--z-dim", "4", "--h-dim", "4", "--members", "2",
        "--flow-layers", "2", "--flow-hidden", "8", "--swag-every", "1"]


def tiny(method: str, **knobs):
    """A validated tiny config of ``method`` and its (model, guide) for 5 classes, 64 data."""
    knobs = {"model": "wrn-10-1", "z_dim": 4, "h_dim": 6, "members": 2, "flow_layers": 2,
             "flow_hidden": 8, "drop_rate": 0.3 if method == "mc-dropout" else 0.0, **knobs}
    config = validate(TrainConfig(method=method, **knobs))
    model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
    return config, model, guide


def swag_of_perturbed_iterates(guide, count: int = 3):
    """Collect ``count`` randomly perturbed iterates into a SWAG guide."""
    for _ in range(count):
        with torch.no_grad():
            guide.iterate.add_(0.01 * torch.randn_like(guide.iterate))
        guide.collect()


def ensemble_of_fresh_nets(config, model, guide):
    """Fill an ensemble guide with independently initialised networks."""
    members = []
    for m in range(config.members):
        torch.manual_seed(100 + m)
        net = create_model(config.model, num_classes=5)
        members.append(dict(net.named_parameters()))
    guide.load_members(members)


@pytest.mark.parametrize("method, knobs", [(m, {}) for m in METHODS] + [
    ("bbb", {"local_reparam": True, "bbb_sites": "all"})])
def test_training_steps_lower_the_loss_on_a_fixed_batch(method, knobs):
    if METHODS[method].post_hoc:
        pytest.skip("fitted post hoc to a finished run: never trained")
    config, _, _ = tiny(method, **knobs)
    if METHODS[method].trains_members:  # the ensemble trains through its members' runs
        config = member_config(config, 1)
    model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
    optimizer = make_optimizer(config, model, guide)
    x, y = tiny_batch(16)
    loss_fn = make_loss(config)

    def loss_at_fixed_noise() -> float:
        pyro.set_rng_seed(7)
        return loss_fn.loss_and_logits(model, guide, x, y)[0].item()

    before = loss_at_fixed_noise()
    for _ in range(4):
        train_step(model, guide, loss_fn, optimizer, x, y)
    assert loss_at_fixed_noise() < before


class OneConv(nn.Module):
    """One generated 3x3 conv, global average pooling and a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 5)

    def residual_blocks(self):
        return {"block": ["conv.weight"]}

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_bbb_elbo_equals_the_hand_computed_value_for_one_layer():
    torch.manual_seed(0)
    net = OneConv()
    fc_w, fc_b = net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    model = BayesianNetwork(net, num_data=50)
    guide = MeanFieldNormal(model, init_scale=0.05)
    with torch.no_grad():
        guide.rhos.conv.weight.normal_(-3, 0.5)
    x, y = tiny_batch(8)
    weight_decay, temperature = 1e-3, 0.7
    pyro.set_rng_seed(3)
    elbo = WeightSpaceELBO(weight_decay, kl_weight=temperature)
    loss = elbo.differentiable_loss(model, guide, x, y)

    mu = guide.locs.conv.weight.detach()
    sigma = F.softplus(guide.rhos.conv.weight.detach())
    pyro.set_rng_seed(3)
    w = mu + sigma * torch.empty_like(mu).normal_()
    logits = F.linear(F.conv2d(x, w, padding=1).mean((2, 3)), fc_w, fc_b)
    log_lik = -F.cross_entropy(logits, y, reduction="sum") * 50 / 8
    prior_std = math.sqrt(2 / 27)  # He: 2 / fan_in, fan_in = 3 * 3 * 3
    kl = (math.log(prior_std) - sigma.log() + (sigma**2 + mu**2) / (2 * prior_std**2) - 0.5).sum()
    expected = (temperature * kl - log_lik) / 50 + weight_decay / 2 * (
        fc_w.square().sum() + fc_b.square().sum())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_local_reparameterisation_matches_the_moments_of_sampled_weights(layout):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 5, 5).contiguous(memory_format=layout)  # training batches: channels-last
    loc, scale = torch.randn(3, 2, 3, 3) * 0.3, torch.rand(3, 2, 3, 3) * 0.3
    n = 4000
    w = loc + scale * torch.randn(n, *loc.shape)
    sampled = torch.stack([F.conv2d(x, w[i], padding=1) for i in range(n)])
    draw = w[0]  # the registered draw (its value is not used)
    with LocalReparameterization({id(draw): (loc, scale)}):
        local = torch.stack([F.conv2d(x, draw, padding=1) for _ in range(n)])
        plain = F.conv2d(x, loc, padding=1)  # an unregistered weight is left alone
    assert torch.equal(plain, F.conv2d(x, loc, padding=1))
    assert torch.allclose(local.mean(0), sampled.mean(0), atol=0.06)
    assert torch.allclose(local.var(0), sampled.var(0), rtol=0.15, atol=0.01)


@pytest.mark.parametrize("make", [
    lambda: torch.empty(4, 3, 5, 6),
    lambda: torch.empty(4, 3, 5, 6).contiguous(memory_format=torch.channels_last),
    lambda: torch.empty(6, 5).t(),
    lambda: torch.empty(4, 6, 5, 6)[:, ::2],  # not dense: the noise comes out contiguous
])
def test_standard_normal_like_has_randn_likes_layout_and_law(make):
    from pyro_implicit.elbo import standard_normal_like

    x = make()
    torch.manual_seed(0)
    reference = torch.randn_like(x)
    noise = standard_normal_like(x)
    assert noise.shape == x.shape and noise.stride() == reference.stride()
    draws = torch.stack([standard_normal_like(x) for _ in range(500)])
    assert draws.mean().abs() < 0.02 and (draws.std() - 1).abs() < 0.02
    assert draws.mean(0).abs().max() < 0.25  # every position is drawn afresh


def test_ensemble_average_equals_the_mean_of_its_members():
    config, model, guide = tiny("ensemble", members=3)
    ensemble_of_fresh_nets(config, model, guide)
    x, _ = tiny_batch(6)
    model.eval()
    members = torch.stack([model.materialize(guide.weights(torch.tensor([m])))(x).softmax(-1)
                           for m in range(3)])
    for draws in (3, 6):  # draws cycle through the members: 6 draws = every member twice
        frozen = freeze_posterior(model, guide, draws)
        assert frozen.latents.flatten().tolist() == [m % 3 for m in range(draws)]
        assert torch.allclose(model_average(model, frozen, x), members.mean(0), atol=1e-6)
        guide.draws = 0


@pytest.mark.parametrize("method", list(METHODS))
def test_samples_differ_exactly_where_they_should(method):
    config, model, guide = tiny(method)
    if method == "ensemble":
        ensemble_of_fresh_nets(config, model, guide)
    if method == "swag":
        swag_of_perturbed_iterates(guide)
    x, _ = tiny_batch(6)
    probs = predict_probs(model, freeze_posterior(model, guide, 2), x)
    assert torch.equal(probs[0], probs[1]) == (method in POINT)
    if method not in POINT:  # a latent names its sample: the same latent, the same weights
        z = guide.sample_latent()
        for name, value in guide.weights(z).items():
            assert torch.equal(value, guide.weights(z)[name]), name


def test_mc_dropout_keeps_dropout_on_and_batchnorm_in_eval_mode():
    _, model, guide = tiny("mc-dropout")
    x, _ = tiny_batch(6)
    model.eval()
    stats = {k: v.clone() for k, v in model.net.named_buffers()}
    a, b = guide.sample_latent(), guide.sample_latent()
    with torch.no_grad():
        plain = model.logits(x, {})
        assert torch.equal(model.logits(x, guide.weights(a)), model.logits(x, guide.weights(a)))
        assert not torch.equal(model.logits(x, guide.weights(a)), model.logits(x, guide.weights(b)))
        assert not torch.equal(model.logits(x, guide.weights(a)), plain)
        assert torch.equal(model.logits(x, {SEED: torch.tensor([-1])}), plain)
    for name, value in model.net.named_buffers():
        assert torch.equal(value, stats[name]), name
    with pytest.raises(ValueError, match="mask"):
        model.materialize(guide.weights(a))


def test_bayes_hypernet_starts_at_the_point_network_and_samples_scales():
    torch.manual_seed(0)
    net = create_model("wrn-10-1", num_classes=5)
    initial = {s: net.get_parameter(s).detach().clone()
               for names in net.residual_blocks().values() for s in names}
    torch.manual_seed(0)
    _, model, guide = tiny("bayes-hypernet")
    kernels = model.network_tensors({SCALES: model.initial_scales()})
    assert kernels.keys() == initial.keys()
    for name, value in initial.items():
        assert torch.allclose(kernels[name], value, atol=1e-6), name
    eps = guide.sample_latent()
    assert eps.shape == guide.latent_shape == model.sites[0].shape
    g = guide.weights(eps)[SCALES]  # identity couplings: g = g0 + 0.01 * (eps, halves swapped)
    noise = (g - model.initial_scales()) / 0.01
    assert torch.allclose(noise.sort().values, eps.sort().values, atol=1e-3)
    state = model.state_dict()
    assert "directions.stage1.0.conv1.weight" in state and "net.stem.weight" in state


def test_kl_weight_anneals_and_tempers():
    config = TrainConfig(method="bbb", kl_anneal=4, temperature=0.5)
    assert [kl_weight(config, e) for e in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert kl_weight(TrainConfig(method="bbb"), 0) == 1.0


@pytest.mark.parametrize("method, extra", [(m, []) for m in METHODS] + [
    ("bbb", ["--local-reparam", "--bbb-sites", "all", "--kl-anneal", "2", "--temperature",
             "0.5", "--init-scale", "0.02"]),
    ("ensemble", ["--member-method", "mle"])])
def test_every_method_trains_and_evaluates_through_the_cli(method, extra, tmp_path):
    run = tmp_path / "run"
    post_hoc = METHODS[method].post_hoc
    if post_hoc:  # fitted to a finished run of its source method
        source = tmp_path / "source"
        assert main(["train", *TINY, "--method", post_hoc.source, "--out", str(source)]) == 0
        assert main(["train", "--method", method, "--from", str(source), "--out", str(run)]) == 0
    else:
        assert main(["train", *TINY, "--method", method, "--out", str(run), *extra]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--samples", "1,2", "--bn-batches", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == method and set(result["samples"]) == {"1", "2"}
    for metrics in result["samples"].values():
        assert 0 <= metrics["error"] <= 1 and math.isfinite(metrics["nll"])
    if method in POINT:
        assert len(set(result["x1_draws"])) == 1
    assert (result["samples"]["1"] == result["samples"]["2"]) == (method in POINT)
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) == 1 and math.isfinite(history[0]["loss"])
    if method == "mc-dropout":
        assert config["drop_rate"] == 0.3
    if method == "ensemble":
        members = [json.loads((run / "members" / str(m) / "metrics.json").read_text())["history"]
                   for m in range(2)]
        assert history[0]["seconds"] == pytest.approx(sum(h[0]["seconds"] for h in members))
        member = json.loads((run / "members" / "1" / "config.json").read_text())
        assert member["method"] == config["member_method"] and member["seed"] == 1
    if extra:
        assert config["local_reparam"] or config["member_method"] == "mle"


def runs_equal(a, b):
    for part in ("model", "guide"):
        assert a[part].keys() == b[part].keys()
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), key
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_bbb_stopped_mid_epoch_resumes_bit_identical(tmp_path, monkeypatch):
    argv = [*TINY, "--batch-size", "16", "--epochs", "2", "--method", "bbb", "--local-reparam",
            "--kl-anneal", "2"]
    assert main(["train", *argv, "--out", str(tmp_path / "straight")]) == 0
    real, calls = WeightSpaceELBO.loss_and_logits, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # epoch 2, step 2 of 4: as a user's Ctrl-C would
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(WeightSpaceELBO, "loss_and_logits", interrupted)
    resumed = tmp_path / "resumed"
    assert main(["train", *argv, "--out", str(resumed)]) == 130
    state = load_checkpoint(resumed / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(WeightSpaceELBO, "loss_and_logits", real)
    assert main(["train", "--resume", str(resumed)]) == 0
    runs_equal(load_checkpoint(tmp_path / "straight" / "checkpoint.pt"),
               load_checkpoint(resumed / "checkpoint.pt"))


def test_ensemble_interrupted_in_a_member_resumes_bit_identical(tmp_path, monkeypatch, capsys):
    argv = [*TINY, "--epochs", "2", "--method", "ensemble"]
    assert main(["train", *argv, "--out", str(tmp_path / "straight")]) == 0
    real, calls = ImplicitMAP.loss_and_logits, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 7:  # member 1, epoch 2, step 1 of 2 (member 0 took 4 steps)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ImplicitMAP, "loss_and_logits", interrupted)
    resumed = tmp_path / "resumed"
    capsys.readouterr()
    assert main(["train", *argv, "--out", str(resumed)]) == 130
    err = capsys.readouterr().err
    assert "member 1: stopped in epoch 2 after step 1" in err and f"--resume {resumed}`" in err
    state = load_checkpoint(resumed / "members" / "1" / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 1)
    assert (resumed / "config.json").is_file() and not (resumed / "checkpoint.pt").exists()
    monkeypatch.setattr(ImplicitMAP, "loss_and_logits", real)
    assert main(["train", "--resume", str(resumed)]) == 0
    runs_equal(load_checkpoint(tmp_path / "straight" / "checkpoint.pt"),
               load_checkpoint(resumed / "checkpoint.pt"))


def test_ensemble_that_fails_before_any_member_checkpoint_leaves_no_run(tmp_path, monkeypatch,
                                                                        capsys):
    def fail(*args, **kwargs):
        raise FloatingPointError("non-finite loss in epoch 1, step 1")

    monkeypatch.setattr(train_module, "train_step", fail)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "ensemble", "--out", str(out)]) == 2
    assert "non-finite" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("args, words", [
    (["--method", "ensemble", "--members", "0"], ["members", "positive integer", "0"]),
    (["--method", "ensemble", "--member-method", "bbb"], ["'bbb'", "map, mle"]),
    (["--method", "ensemble", "--sync-bn"], ["ensemble", "--sync-bn"]),
    (["--method", "bbb", "--bbb-sites", "some"], ["'some'", "residual, all"]),
    (["--method", "bbb", "--init-scale", "0"], ["init_scale", "> 0", "0.0"]),
    (["--method", "bbb", "--temperature", "nan"], ["temperature", "nan"]),
    (["--method", "bbb", "--kl-anneal", "-1"], ["kl_anneal", "-1"]),
    (["--method", "bayes-hypernet", "--flow-layers", "0"], ["flow_layers", "0"]),
    (["--method", "bayes-hypernet", "--flow-hidden", "-3"], ["flow_hidden", "-3"]),
    (["--method", "mc-dropout", "--drop-rate", "0"], ["mc-dropout", "drop rate > 0", "0.3"]),
    (["--method", "mc-dropout", "--model", "pyramidnet-8-4"], ["pyramidnet-8-4", "no dropout"]),
    (["--method", "dropout"], ["'dropout'", "mc-dropout", "bayes-hypernet", "ensemble"]),
])
def test_bad_method_knobs_give_one_clear_line(tmp_path, capsys, args, words):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-implicit: error:") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists()


def test_config_files_without_the_method_knobs_still_load(tmp_path):
    raw = {k: v for k, v in TrainConfig().__dict__.items()
           if k not in {"members", "member_method", "bbb_sites", "init_scale", "local_reparam",
                        "kl_anneal", "temperature", "flow_layers", "flow_hidden"}}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    config = TrainConfig.load(tmp_path / "config.json")
    assert config.members == 4 and config.temperature == 1.0 and not config.local_reparam
