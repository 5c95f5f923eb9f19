"""Last-layer Laplace: its GLM predictive against laplace-torch and against MAP far from the
data, its samples' law, and the post-hoc run contract (train --method laplace --from RUN)."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from laplace import Laplace
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import LinearHead
from pyro_implicit import BayesianNetwork, LastLayerLaplace
from pyro_implicit.inference.checkpoint import load_checkpoint
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.folders import ImageFiles
from pyro_implicit.inference.runs import load_run

TINY = ["--data", "digits", "--train-subset", "60", "--epochs", "1", "--batch-size", "32",
        "--model", "wrn-10-1"]


@pytest.fixture(scope="module")
def separable():
    """A MAP linear classifier of three separated blobs, its data and its fitted Laplace."""
    torch.manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    y = torch.arange(3).repeat_interleave(40)
    x = (centres[y] + 0.5 * torch.randn(120, 2))[:, :, None, None]
    net = LinearHead(3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05, weight_decay=1e-3)
    for _ in range(300):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    map_net = LinearHead(3)
    map_net.load_state_dict(net.state_dict())
    model = BayesianNetwork(net, 120, {"fc": ["fc.weight", "fc.bias"]})
    guide = LastLayerLaplace(model)
    guide.fit(map_net, loader)
    return map_net, model, guide, loader


def test_predictive_is_laplace_torchs_glm_probit(separable):
    map_net, model, guide, loader = separable
    la = Laplace(map_net, "classification", subset_of_weights="last_layer",
                 hessian_structure="kron", last_layer_name="fc")
    la.fit(loader)
    la.prior_precision = guide.prior_precision[:1].clone()
    x = torch.randn(7, 2, 1, 1) * 4
    expected = la(x, pred_type="glm", link_approx="probit")
    assert torch.allclose(guide.predictive_probs(model.eval(), x), expected, atol=1e-5)
    assert not torch.allclose(guide.prior_precision, torch.ones(2))  # tuned by marglik


def test_predictive_is_less_confident_than_map_far_from_the_data(separable):
    map_net, model, guide, _ = separable
    near = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    far = 30 * torch.tensor([[1.0, -1.0], [-1.0, -1.0], [0.0, -1.0]])
    for points in (near, far):
        x = points[:, :, None, None]
        laplace = guide.predictive_probs(model.eval(), x).max(-1).values
        plain = map_net(x).softmax(-1).max(-1).values
        assert (laplace <= plain + 1e-6).all()
    assert (plain - laplace).min() > 0.01  # far: less confident than MAP at every point


def test_samples_give_the_glm_covariance_and_approach_the_probit_predictive(separable):
    _, model, guide, _ = separable
    x = torch.tensor([[1.0, 1.0], [-2.0, 4.0], [6.0, -3.0]])
    torch.manual_seed(2)
    draws = [guide.weights(guide.sample_latent()) for _ in range(20000)]
    logits = torch.stack([x @ w["fc.weight"].T + w["fc.bias"] for w in draws])  # (S, 3, C)
    expected = guide.logit_covariance(x)
    for i in range(3):
        assert torch.allclose(logits[:, i].T.cov(), expected[i], rtol=0.1, atol=0.02)
    mc = logits.softmax(-1).mean(0)
    assert torch.allclose(mc, guide.predictive_probs(model.eval(), x[:, :, None, None]),
                          atol=0.05)


@pytest.fixture(scope="module")
def map_run(tmp_path_factory):
    """A finished tiny map run on digits."""
    run = tmp_path_factory.mktemp("laplace") / "map"
    assert main(["train", *TINY, "--method", "map", "--out", str(run)]) == 0
    return run


def test_laplace_run_holds_its_config_checkpoint_and_evaluates(map_run, tmp_path):
    run = tmp_path / "laplace"
    assert main(["train", "--method", "laplace", "--from", str(map_run), "--out",
                 str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    source = json.loads((map_run / "config.json").read_text())
    assert config["method"] == "laplace" and config["from_run"] == str(map_run.resolve())
    assert {k: v for k, v in config.items() if k not in ("method", "from_run")} == \
        {k: v for k, v in source.items() if k not in ("method", "from_run")}
    state = load_checkpoint(run / "checkpoint.pt")
    map_state = load_checkpoint(map_run / "checkpoint.pt")["model"]
    assert torch.equal(state["guide"]["mean"], torch.cat([map_state["net.fc.weight"].flatten(),
                                                          map_state["net.fc.bias"]]))
    assert torch.equal(state["model"]["net.stem.weight"], map_state["net.stem.weight"])
    assert {"prior_precision", "vectors_0_0", "values_0_1"} <= set(state["guide"])
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--samples", "1,8", "--bn-batches", "1", "--json",
                 str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "laplace" and math.isfinite(result["samples"]["8"]["nll"])
    assert len(set(result["x1_draws"])) >= 1
    # the closed-form GLM probit predictive beside the Monte Carlo averages; its mean is the
    # MAP layer, so it ranks classes almost as the MAP run does
    probit = result["probit"]
    assert {"error", "nll", "ece", "brier", "calibrated"} <= set(probit)
    assert all(math.isfinite(probit[k]) for k in ("error", "nll", "ece", "brier"))
    map_out = tmp_path / "map.json"
    assert main(["evaluate", str(map_run), "--samples", "1", "--bn-batches", "1", "--json",
                 str(map_out)]) == 0
    plain = json.loads(map_out.read_text())
    assert "probit" not in plain
    assert abs(probit["error"] - plain["samples"]["1"]["error"]) <= 0.05


def test_labelled_batches_are_the_training_set_normalised_unaugmented_in_order(map_run):
    run = load_run(map_run)
    batches = list(run.labelled_batches())
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert len(batches[0][0]) == run.config.batch_size and torch.equal(y, run.data.train_y)
    assert torch.equal(x, run.normalizer(run.data.train_x))  # no crop, no flip
    run.data.train_x = ImageFiles([Path(f"{i}.png") for i in range(len(y))])
    with pytest.raises(ValueError, match="in-memory data; imagenet:PATH is not supported"):
        run.labelled_batches()


def _refused(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-implicit: error:") and err.count("\n") == 1, err
    for word in words:
        assert word in err, (word, err)


def test_from_is_refused_clearly(map_run, tmp_path, capsys):
    out = str(tmp_path / "new")
    _refused(capsys, ["train", *TINY, "--method", "map", "--from", str(map_run), "--out", out],
             "--from", "laplace", "map trains from scratch")
    _refused(capsys, ["train", "--method", "laplace", "--out", out], "--from RUN")
    _refused(capsys, ["train", "--method", "laplace", "--from", str(map_run), "--epochs", "3",
                      "--out", out], "--epochs", "ignored")
    other = tmp_path / "mle"
    shutil.copytree(map_run, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "method": "mle"}))
    _refused(capsys, ["train", "--method", "laplace", "--from", str(other), "--out", out],
             "a mle run", "finished map run")
    unfinished = tmp_path / "unfinished"
    shutil.copytree(map_run, unfinished)
    (unfinished / "metrics.json").write_text(json.dumps({"history": []}))
    _refused(capsys, ["train", "--method", "laplace", "--from", str(unfinished), "--out", out],
             "an unfinished map run")
    _refused(capsys, ["train", "--method", "laplace", "--from", str(tmp_path / "none"),
                      "--out", out], "not a run folder")
    assert not (tmp_path / "new").exists()
