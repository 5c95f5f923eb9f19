"""Saving and loading, as a user would: build and train in Python, save, load in a new process.

Also the param store route (``pyro.get_param_store().save()`` / ``.load()``) and the frozen
posterior's own ``state_dict``.
"""

import subprocess
import sys
import textwrap
import warnings

import pyro
import pytest
import torch
from pyro.infer import SVI, Predictive

from pyro_implicit import (
    BayesianNetwork,
    EnsembleGuide,
    FrozenPosterior,
    ImplicitGuide,
    ImplicitMAP,
    MCDropoutGuide,
    MCDropoutNetwork,
    MeanFieldNormal,
    PointGuide,
    ScaleFlow,
    WeightNormNetwork,
    WeightSpaceELBO,
    freeze_posterior,
    load,
    model_average,
    predict_probs,
    save,
    sync_param_store,
)
from pyro_implicit.models import create_model

ARCH = ("wrn-10-1", {"num_classes": 5})


def network(**kwargs):
    return create_model("wrn-10-1", num_classes=5, **kwargs)


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def hypernet():
    model = BayesianNetwork(network(), num_data=32)
    guide = ImplicitGuide(model, strategy="block-wise", prior="uniform", z_dim=4, h_dim=6,
                          z_loc=0.5, z_scale=2.0, anchor_seed=3)
    guide.spread = 0.5  # mid-schedule: draws contracted towards the anchor
    return model, guide, ImplicitMAP()


def point():
    return (BayesianNetwork(network(), 32, generated={}), PointGuide(),
            ImplicitMAP())


def bbb():
    model = BayesianNetwork(network(), 32)
    return model, MeanFieldNormal(model, init_scale=0.05), WeightSpaceELBO()


def bayes_hypernet():
    model = WeightNormNetwork(network(), 32, prior_scale=2.0)
    return model, ScaleFlow(model, layers=2, hidden=8), WeightSpaceELBO()


def mc_dropout():
    return MCDropoutNetwork(network(drop_rate=0.3), 32), MCDropoutGuide(), ImplicitMAP()


def ensemble():
    model = BayesianNetwork(network(), 32)
    guide = EnsembleGuide(model, members=2)
    guide.load_members([{s.name: torch.randn(s.shape) * 0.1 for s in model.sites}
                        for _ in range(2)])
    guide.sample_latent()  # the next draw is member 1: the count is saved too
    return model, guide, ImplicitMAP()


METHODS = {"hypernet": hypernet, "map": point, "bbb": bbb, "bayes-hypernet": bayes_hypernet,
           "mc-dropout": mc_dropout, "ensemble": ensemble}
DROPOUT_ARCH = ("wrn-10-1", {"num_classes": 5, "drop_rate": 0.3})


def train(build, steps=2):
    """A user's script: model and guide, a few SVI steps, a frozen posterior of 2 samples."""
    model, guide, loss = build()
    x, y = data()
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.05, "momentum": 0.9}), loss=loss)
    for _, (xb, yb) in zip(range(steps), batches, strict=False):
        svi.step(xb, yb)
    return model, guide, freeze_posterior(model, guide, 2, batches=batches)


LOAD_SCRIPT = textwrap.dedent("""
    import sys, torch
    from pyro.infer import Predictive
    from pyro_implicit import load, model_average
    folder, names = sys.argv[1], sys.argv[3:]
    torch.set_num_threads(int(sys.argv[2]))
    out = {}
    for name in names:
        model, guide, frozen = load(f"{folder}/{name}.pt")
        x = torch.load(f"{folder}/x.pt")
        model.eval()
        logits = Predictive(model, guide=frozen, num_samples=len(frozen),
                            return_sites=["logits"])(x)["logits"]
        out[name] = {"average": model_average(model, frozen, x), "logits": logits,
                     "latent": guide.sample_latent(), "training": guide.training}
    torch.save(out, f"{folder}/loaded.pt")
""")


def test_every_method_saved_loads_in_a_new_process_and_predicts_exactly(tmp_path):
    x_test = data(6, seed=9)[0]
    torch.save(x_test, tmp_path / "x.pt")
    expected = {}
    for name, build in METHODS.items():
        pyro.clear_param_store()  # one model per param store, as the docs ask
        model, guide, frozen = train(build)
        save(tmp_path / f"{name}.pt", model, guide, frozen,
             architecture=DROPOUT_ARCH if name == "mc-dropout" else ARCH)
        # the file is plain data: torch's safe loader reads it
        state = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert state["frozen"]["latents"].shape[0] == 2
        expected[name] = {"average": model_average(model, frozen, x_test),
                          "probs": predict_probs(model, frozen, x_test),
                          "latent": guide.sample_latent(), "training": guide.training}
    subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path),
                    str(torch.get_num_threads()), *METHODS], check=True, cwd=tmp_path)
    loaded = torch.load(tmp_path / "loaded.pt", weights_only=True)
    for name, ref in expected.items():
        got = loaded[name]
        assert torch.equal(got["average"], ref["average"]), name
        # Predictive's draw i is frozen sample i; logits are (N, 1, batch, classes)
        assert got["logits"].shape == (2, 1, 6, 5), name
        assert torch.allclose(got["logits"].squeeze(1).softmax(-1), ref["probs"], atol=1e-6)
        assert got["training"] == ref["training"], name
    # an ensemble's draws continue where they were: the next member
    assert torch.equal(loaded["ensemble"]["latent"], expected["ensemble"]["latent"])


def test_load_keeps_the_rng_and_takes_over_the_param_store(tmp_path):
    model, guide, frozen = train(hypernet)
    save(tmp_path / "run.pt", model, guide, frozen, architecture=ARCH)
    x = data(4, seed=5)[0]
    expected = model_average(model, frozen, x)
    before = torch.random.get_rng_state()
    model2, guide2, frozen2 = load(tmp_path / "run.pt")  # the store still holds model's values
    assert torch.equal(torch.random.get_rng_state(), before)
    assert pyro.get_param_store()["hypernet$$$output"] is guide2.hypernet.output
    with torch.no_grad():
        guide.hypernet.output.mul_(3)  # the first model's values are no longer in the store
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(model_average(model2, frozen2, x), expected)


def test_load_refuses_a_file_saved_without_architecture(tmp_path):
    model, guide, frozen = train(point, steps=1)
    save(tmp_path / "run.pt", model, guide)
    with pytest.raises(ValueError, match="architecture"):
        load(tmp_path / "run.pt")


def test_frozen_is_none_when_not_saved(tmp_path):
    model, guide, _ = train(point, steps=1)
    save(tmp_path / "run.pt", model, guide, architecture=ARCH)
    assert load(tmp_path / "run.pt")[2] is None


def test_save_checks_that_the_architecture_rebuilds_the_network(tmp_path):
    model, guide, frozen = train(point, steps=1)
    with pytest.raises(ValueError, match="does not rebuild this network"):
        save(tmp_path / "run.pt", model, guide, frozen, architecture="wrn-10-1")  # 10 classes
    with pytest.raises(ValueError, match="unknown model"):
        save(tmp_path / "run.pt", model, guide, frozen, architecture=("wrn-9", {}))
    with pytest.raises(TypeError, match="only strings, numbers"):
        save(tmp_path / "run.pt", model, guide, frozen,
             architecture=("wrn-10-1", {"num_classes": torch.tensor(5)}))
    pyro.clear_param_store()
    _, _, other = train(point, steps=1)
    with pytest.raises(ValueError, match="another guide"):
        save(tmp_path / "run.pt", model, guide, other, architecture=ARCH)


def test_a_network_class_by_import_path(tmp_path):
    arch = ("pyro_implicit.models.wide_resnet:WideResNet",
            {"depth": 10, "widen_factor": 1, "num_classes": 5})
    model, guide, frozen = train(hypernet)
    save(tmp_path / "run.pt", model, guide, frozen, architecture=arch)
    x = data(4, seed=5)[0]
    expected = model_average(model, frozen, x)
    model2, guide2, frozen2 = load(tmp_path / "run.pt")
    assert torch.equal(model_average(model2, frozen2, x), expected)


def test_load_builds_only_network_classes(tmp_path):
    """A file cannot make load call an arbitrary function, though it may name one."""
    model, guide, frozen = train(point, steps=1)
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        save(tmp_path / "run.pt", model, guide, architecture=("os:getcwd", {}))
    save(tmp_path / "run.pt", model, guide, architecture=ARCH)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    state["architecture"] = {"name": "subprocess:run", "kwargs": {"args": ["false"]}}
    torch.save(state, tmp_path / "evil.pt")
    with pytest.raises(TypeError, match="not an nn.Module subclass"):
        load(tmp_path / "evil.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not written by pyro_implicit.save"):
        load(tmp_path / "other.pt")


def test_unsupported_guide_is_named(tmp_path):
    model, _, _ = train(point, steps=1)

    class MyGuide(PointGuide):
        pass

    with pytest.raises(TypeError, match="MyGuide.*supported: ImplicitGuide, PointGuide"):
        save(tmp_path / "run.pt", model, MyGuide(), architecture=ARCH)


def test_frozen_posterior_state_dict_round_trip():
    model, guide, frozen = train(hypernet)
    state = frozen.state_dict()
    assert set(state) == {"latents", *(f"bn.{site}" for site in model.bn_sites)}
    x = data(4, seed=5)[0]
    expected = model_average(model, frozen, x)
    rebuilt = FrozenPosterior.from_state_dict(guide, state, model)
    assert torch.equal(model_average(model, rebuilt, x), expected)
    # load_state_dict into another posterior of the same size replaces its samples
    other = freeze_posterior(model, guide, 2)
    model_average(model, other, x)  # its kernels are cached...
    other.load_state_dict(state)
    assert torch.equal(model_average(model, other, x), expected)  # ...and regenerated


def param_store_script(tmp_path, sync):
    """Train, save the param store, start over, load it, predict (BN recalibrated)."""
    x, y = data()
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    model, guide, loss = hypernet()
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.05}), loss=loss)
    for xb, yb in batches[:2]:
        svi.step(xb, yb)
    pyro.get_param_store().save(tmp_path / "params.pt")
    pyro.set_rng_seed(1)
    expected = model_average(model, freeze_posterior(model, guide, 2, batches), x[:4])

    pyro.clear_param_store()
    model, guide, _ = hypernet()
    pyro.get_param_store().load(tmp_path / "params.pt")
    if sync:
        assert "hypernet$$$output" in sync_param_store(model, guide)
    pyro.set_rng_seed(1)
    return model_average(model, freeze_posterior(model, guide, 2, batches), x[:4]), expected


def test_param_store_route_warns_with_the_fix(tmp_path):
    with pytest.warns(UserWarning, match=r"sync_param_store\(model, guide\)"):
        got, expected = param_store_script(tmp_path, sync=False)
    assert not torch.allclose(got, expected)  # what the warning is about


def test_param_store_route_with_the_fix_predicts_exactly(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, expected = param_store_script(tmp_path, sync=True)
    assert torch.equal(got, expected)


def test_sync_keeps_the_modules_parameters_so_training_continues(tmp_path):
    model, guide, loss = hypernet()
    x, y = data(8)
    SVI(model, guide, pyro.optim.SGD({"lr": 0.05}), loss=loss).step(x, y)
    pyro.get_param_store().save(tmp_path / "params.pt")
    saved = guide.hypernet.output.detach().clone()
    pyro.clear_param_store()
    model, guide, loss = hypernet()
    own = guide.hypernet.output
    pyro.get_param_store().load(tmp_path / "params.pt")
    sync_param_store(model, guide)
    assert guide.hypernet.output is own and torch.equal(own, saved)
    SVI(model, guide, pyro.optim.SGD({"lr": 0.05}), loss=loss).step(x, y)
    assert not torch.equal(own, saved)  # SVI trains the module's tensor
    assert pyro.get_param_store()["hypernet$$$output"] is own


def test_sync_refuses_another_models_parameters():
    train(hypernet, steps=1)
    model = BayesianNetwork(create_model("wrn-10-2", num_classes=5), 32)
    with pytest.raises(ValueError, match="clear_param_store"):
        sync_param_store(model)


def test_predictive_runs_on_a_loaded_posterior(tmp_path):
    model, guide, frozen = train(hypernet)
    save(tmp_path / "run.pt", model, guide, frozen, architecture=ARCH)
    model, guide, frozen = load(tmp_path / "run.pt")
    model.eval()
    x = data(3, seed=4)[0]
    logits = Predictive(model, guide=frozen, num_samples=2, return_sites=["logits"])(x)
    assert torch.allclose(logits["logits"].squeeze(1).softmax(-1).mean(0),
                          model_average(model, frozen, x), atol=1e-6)
