"""One-call APIs over posterior draws: ``forms.assemble`` from any kind of draws, and
``posterior_inference_data`` (guide or frozen posterior -> InferenceData for az.waic / az.loo)."""

from __future__ import annotations

import warnings

import arviz as az
import numpy as np
import pyro
import pytest
import torch

from conftest import tiny_batch, tiny_model
from pyro_implicit import BayesianNetwork, PointGuide, freeze_posterior, predict_probs
from pyro_implicit.analysis import (
    posterior_inference_data,
    to_inference_data,
    weight_correlations,
)
from pyro_implicit.forms import assemble, draws_needed
from pyro_implicit.models import create_model

# --- assemble ---------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["parallelizing", "widening"])
def test_assemble_takes_a_frozen_posterior_a_list_or_a_function(form):
    model, guide = tiny_model("layer-wise")
    x, _ = tiny_batch()
    count = draws_needed(form, 2)
    pyro.set_rng_seed(3)
    frozen = freeze_posterior(model, guide, count)
    draws = [guide.weights(z) for z in frozen.latents]
    with torch.no_grad():
        outputs = [assemble(model, w, 2, form).eval()(x)
                   for w in (frozen, draws, tuple(draws), lambda m: draws[m])]
    for out in outputs[1:]:
        assert torch.equal(out, outputs[0])


def test_assemble_says_what_it_wants():
    model, guide = tiny_model()
    draws = [guide.weights(guide.sample_latent()) for _ in range(3)]
    with pytest.raises(ValueError, match="widening with n=2 needs 4 draws.*got 3"):
        assemble(model, draws, 2, "widening")
    with pytest.raises(TypeError, match="FrozenPosterior, a list of draws.*got dict"):
        assemble(model, draws[0], 1, "parallelizing")


# --- posterior_inference_data -----------------------------------------------------------------


def _data(n: int = 12):
    x, y = tiny_batch(n, seed=2)
    return x, y, lambda: iter(tiny_batch(16, seed=4)[0].split(8))  # test set, training inputs


def _loo_and_waic(idata):
    with warnings.catch_warnings():  # Pareto-k and variance warnings: a tiny, untrained model
        warnings.simplefilter("ignore")
        return az.loo(idata, pointwise=True), az.waic(idata)


def test_one_call_gives_the_four_groups_ready_for_waic_and_loo():
    model, guide = tiny_model("block-wise")
    x, y, batches = _data()
    pyro.set_rng_seed(7)
    idata = posterior_inference_data(model, guide, x, y, num_draws=32, batches=batches,
                                     num_pairs=10, weights=["stage1.0.conv1.weight[0,0,1,1]"])
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data",
            "constant_data"} <= set(idata.groups())
    assert dict(idata.posterior.sizes) == {"chain": 1, "draw": 32, "weight": 1 + 2 * 2 * 10,
                                           "z_group": 3, "z_dim": 4}  # 10 pairs of each kind
    assert dict(idata.log_likelihood["y"].sizes) == {"chain": 1, "draw": 32, "test_point": 12}
    assert idata.posterior_predictive["probs"].shape == (1, 32, 12, 5)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    probs = idata.posterior_predictive["probs"].values[0]
    true = np.take_along_axis(probs, y.numpy()[None, :, None], -1)[..., 0]
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], np.log(true), rtol=1e-6)
    assert weight_correlations(idata)["draws"] == 32
    loo, waic = _loo_and_waic(idata)
    assert np.isfinite(loo.elpd_loo) and np.isfinite(waic.elpd_waic)
    assert loo.pareto_k.shape == (12,)

    # draw d of every group is the same posterior draw: the frozen posterior of the same seed
    pyro.set_rng_seed(7)
    frozen = freeze_posterior(model, guide, 32, batches)
    np.testing.assert_array_equal(idata.posterior["z"].values[0], frozen.latents.numpy())
    np.testing.assert_allclose(probs, predict_probs(model, frozen, x).numpy(), rtol=1e-5,
                               atol=1e-6)
    w = idata.posterior["w"].sel(weight="stage1.0.conv1.weight[0,0,1,1]").values[0]
    with torch.no_grad():
        kernels = [guide.weights(z)["stage1.0.conv1.weight"] for z in frozen.latents]
    np.testing.assert_array_equal(w, [k[0, 0, 1, 1] for k in kernels])
    again = posterior_inference_data(model, frozen, x, y, num_pairs=0, batch_size=5)
    assert "w" not in again.posterior and "constant_data" not in again.groups()
    np.testing.assert_allclose(again.posterior_predictive["probs"].values[0], probs, rtol=1e-5,
                               atol=1e-6)


def test_point_estimates_give_one_draw_of_weights():
    net = create_model("wrn-10-1", num_classes=5)
    model = BayesianNetwork(net, num_data=64, generated={})
    x, y, batches = _data()
    idata = posterior_inference_data(model, PointGuide(), x, y, batches=batches, num_pairs=4)
    assert list(idata.posterior.data_vars) == ["w"] and idata.posterior.sizes["draw"] == 1
    with pytest.raises(ValueError, match="PointGuide has no z groups: name weights"):
        posterior_inference_data(model, PointGuide(), x, y, num_pairs=0)


def test_bad_calls_are_explained():
    model, guide = tiny_model()
    x, y, batches = _data()
    frozen = freeze_posterior(model, guide, 2)
    with pytest.raises(ValueError, match="frozen posterior has its draws.*for guides"):
        posterior_inference_data(model, frozen, x, y, num_draws=4)
    with pytest.warns(UserWarning, match="pass batches= to recalibrate"):
        posterior_inference_data(model, guide, x, y, num_draws=2)


def test_latents_alone_make_a_posterior_group():
    idata = to_inference_data(latents=np.zeros((3, 2, 4)), z_groups=["a", "b"])
    assert dict(idata.posterior["z"].sizes) == {"chain": 1, "draw": 3, "z_group": 2, "z_dim": 4}
