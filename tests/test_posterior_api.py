"""A frozen posterior as a user meets it: under ``Predictive``, as a plain guide, and fed by a
DataLoader."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive
from torch.utils.data import DataLoader, TensorDataset

from pyro_implicit import (
    BayesianNetwork,
    ImplicitGuide,
    ImplicitMAP,
    freeze_posterior,
    model_average,
    predict_probs,
)
from pyro_implicit.models import create_model


def trained(num_samples=3):
    """The README's cycle on random stand-in data: model, guide, SVI, a frozen posterior."""
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 5, (32,))
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    model = BayesianNetwork(create_model("wrn-10-1", num_classes=5), num_data=len(x))
    guide = ImplicitGuide(model, z_dim=4, h_dim=6)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.05}), loss=ImplicitMAP())
    for xb, yb in batches[:2]:
        svi.step(xb, yb)
    return model, guide, freeze_posterior(model, guide, num_samples, batches=batches), x[:5]


def predictive_logits(model, frozen, x, num_samples):
    return Predictive(model, guide=frozen, num_samples=num_samples,
                      return_sites=["logits"])(x)["logits"]


def test_predictive_draw_i_is_sample_i_whatever_came_before():
    model, guide, frozen, x = trained()
    model.eval()
    first = predictive_logits(model, frozen, x, 3)
    assert first.shape == (3, 1, 5, 5)  # (samples, the data plate's dim, batch, classes)
    frozen(x)  # a call outside Predictive
    again = predictive_logits(model, frozen, x, 3)
    assert torch.equal(first, again)
    assert torch.allclose(first.squeeze(1).softmax(-1), predict_probs(model, frozen, x),
                          atol=1e-6)
    assert torch.allclose(first.squeeze(1).softmax(-1).mean(0), model_average(model, frozen, x),
                          atol=1e-6)


@pytest.mark.parametrize("num_samples", [0, 1, 5])
def test_predictive_with_another_number_of_samples_is_refused(num_samples):
    model, guide, frozen, x = trained()
    model.eval()
    with pytest.raises(ValueError, match=rf"num_samples={num_samples}\).*len\(frozen\)"):
        predictive_logits(model, frozen, x, num_samples)
    # the fix the message names
    small = frozen.subset(0, 1)
    assert torch.equal(predictive_logits(model, small, x, 1)[0],
                       predictive_logits(model, frozen, x, 3)[0])


def test_predictive_in_train_mode_is_refused_and_touches_nothing():
    model, guide, frozen, x = trained()
    model.train()
    before = {k: v.clone() for k, v in model.net.named_buffers()}
    with pytest.raises(ValueError, match=r"train mode.*model\.eval\(\)"):
        predictive_logits(model, frozen, x, 3)
    for name, value in model.net.named_buffers():
        assert torch.equal(value, before[name]), name


def test_parallel_predictive_is_refused():
    model, guide, frozen, x = trained()
    model.eval()
    with pytest.raises(ValueError, match="parallel=False"):
        Predictive(model, guide=frozen, num_samples=3, parallel=True)(x)


def test_outside_predictive_each_call_draws_a_sample_at_random():
    model, guide, frozen, x = trained()
    pyro.set_rng_seed(3)
    drawn = [poutine.trace(frozen).get_trace(x).nodes["z"]["value"] for _ in range(30)]
    indices = [next(i for i in range(len(frozen)) if torch.equal(z, frozen.latents[i]))
               for z in drawn]
    assert set(indices) == {0, 1, 2}
    pyro.set_rng_seed(3)
    again = [poutine.trace(frozen).get_trace(x).nodes["z"]["value"] for _ in range(30)]
    assert all(torch.equal(a, b) for a, b in zip(drawn, again, strict=True))


def test_freeze_posterior_takes_batches_as_a_dataloader_yields_them():
    model, guide, _, _ = trained()
    x, y = torch.randn(24, 3, 8, 8), torch.randint(0, 5, (24,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    frozen = {}
    for name, batches in {"loader": loader, "pairs": [(x[i:i + 8], y[i:i + 8])
                                                       for i in range(0, 24, 8)],
                          "inputs": list(x.split(8)), "function": lambda: iter(x.split(8))
                          }.items():
        pyro.set_rng_seed(0)
        frozen[name] = freeze_posterior(model, guide, 2, batches=batches)
    for name, posterior in frozen.items():
        for site, value in posterior.bn_stats.items():
            assert torch.equal(value, frozen["loader"].bn_stats[site]), (name, site)
    with pytest.raises(TypeError, match="one-shot iterator"):
        freeze_posterior(model, guide, 2, batches=(xb for xb, _ in loader))
    with pytest.raises(TypeError, match=r"pass \[x\]"):
        freeze_posterior(model, guide, 2, batches=x)
