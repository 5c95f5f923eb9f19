"""The guide contract: every guide the library builds is a PosteriorGuide, with weights keyed by
model site, ``is_point`` only for the point estimate and z groups only for the hypernetwork."""

import pyro.poutine as poutine
import pytest
import torch
from test_methods import tiny

from conftest import tiny_batch, tiny_model
from pyro_implicit import ImplicitGuide, PointGuide
from pyro_implicit.guide import PosteriorGuide
from pyro_implicit.inference.methods import METHODS


@pytest.mark.parametrize("method", list(METHODS))
def test_every_built_guide_meets_the_contract(method):
    _, model, guide = tiny(method)
    assert isinstance(guide, PosteriorGuide)
    z = guide.sample_latent()
    assert z.shape == guide.latent_shape
    weights = guide.weights(z)
    assert isinstance(weights, dict)
    assert set(weights) == {s.name for s in model.sites}
    for site in model.sites:
        assert isinstance(weights[site.name], torch.Tensor)
        assert weights[site.name].shape == site.shape
    assert guide.is_point == isinstance(guide, PointGuide)
    assert (guide.z_groups is not None) == isinstance(guide, ImplicitGuide)
    x, _ = tiny_batch(2)
    poutine.trace(guide).get_trace(x)  # callable as a Pyro guide


@pytest.mark.parametrize("strategy", ["all-in-one", "block-wise", "layer-wise"])
def test_implicit_z_groups_are_its_groups_one_per_row_of_z(strategy):
    _, guide = tiny_model(strategy)
    assert guide.z_groups is guide.groups
    assert len(guide.z_groups) == guide.latent_shape[0]
    assert not guide.is_point


def test_an_object_lacking_members_is_not_a_posterior_guide():
    class Partial:
        latent_shape = (1,)

        def sample_latent(self):
            return torch.zeros(1)

        def weights(self, z):
            return {}

    assert not isinstance(Partial(), PosteriorGuide)
