"""Every network x strategy x form x prior: constructs, trains one step, evaluates (tiny)."""

from __future__ import annotations

import pytest
import torch

from pyro_implicit import (
    STRATEGIES,
    BayesianNetwork,
    ImplicitGuide,
    ImplicitMAP,
    freeze_posterior,
    model_average,
    recalibrate_bn,
)
from pyro_implicit.forms import FORMS, assemble, draws_needed
from pyro_implicit.models import create_model
from pyro_implicit.objective import unique_parameters
from pyro_implicit.priors import PRIOR_DESCRIPTIONS

NETWORKS = ("wrn-10-1", "resnext-11-2x4d", "pyramidnet-20-24", "resnet-14-w8")


@pytest.mark.parametrize("prior", list(PRIOR_DESCRIPTIONS))
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("network", NETWORKS)
def test_combination_trains_one_step_and_evaluates(network, strategy, form, prior):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)
    model = BayesianNetwork(create_model(network, num_classes=3), num_data=16)
    guide = ImplicitGuide(model, strategy, prior, z_dim=3, h_dim=3)
    assert len(guide.groups) == {"all-in-one": 1, "block-wise": len(model.blocks),
                                 "layer-wise": len(model.sites)}[strategy]
    theta = guide.hypernet.output.detach().clone()
    optimizer = torch.optim.SGD(unique_parameters(model, guide), lr=0.1)
    loss = ImplicitMAP()(model, guide, x, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(guide.hypernet.output, theta)

    n = 2
    if form == "branching":
        posterior = freeze_posterior(model, guide, n, lambda: [x])
        probs = model_average(model, posterior, x)
    else:
        latents = [guide.sample_latent() for _ in range(draws_needed(form, n))]
        with torch.no_grad():
            net = assemble(model, lambda m: guide.weights(latents[m]), n, form)
            recalibrate_bn(net, [x])
            probs = net.eval()(x).softmax(-1)
    assert probs.shape == (4, 3) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))
