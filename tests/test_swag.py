"""SWAG: the moments and deviations it collects, the law of its samples, and a run through the
command line."""

import json

import torch

from conftest import LinearHead
from pyro_implicit import BayesianNetwork, SWAGGuide
from pyro_implicit.inference.checkpoint import load_checkpoint
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.methods import learning_rate


def guide_of(iterates: torch.Tensor, rank: int) -> SWAGGuide:
    """A SWAG guide over Head's weights that collected ``iterates`` (one per row)."""
    model = BayesianNetwork(LinearHead(2), 10, {"fc": ["fc.weight", "fc.bias"]})
    guide = SWAGGuide(model, rank)
    for w in iterates:
        guide.iterate.data.copy_(w)
        guide.collect()
    return guide


def test_moments_and_deviations_equal_a_direct_computation():
    torch.manual_seed(0)
    iterates, rank = torch.randn(7, 6) * 0.3 + torch.arange(6.0), 3
    guide = guide_of(iterates, rank)
    w = iterates.double()
    running = w.cumsum(0) / torch.arange(1, 8).unsqueeze(1)  # the mean after each collection
    assert int(guide.collected) == 7
    assert torch.allclose(guide.mean.double(), w.mean(0), atol=1e-6)
    assert torch.allclose(guide.sq_mean.double(), w.square().mean(0), atol=1e-5)
    assert torch.allclose(guide.variance().double(), w.var(0, correction=0), atol=1e-5)
    for n in range(7 - rank, 7):  # the last K deviations, in the ring at n mod K
        assert torch.allclose(guide.deviations[n % rank].double(), w[n] - running[n], atol=1e-6)


def test_samples_have_the_swag_mean_and_covariance():
    torch.manual_seed(1)
    guide = guide_of(torch.randn(6, 6) * torch.linspace(0.1, 1, 6), rank=4)
    deviations = guide.deviations.double()
    expected = torch.diag(guide.variance().double()) / 2 + deviations.T @ deviations / (2 * 3)
    draws = torch.stack([torch.cat([v.flatten() for v in guide.weights(guide.sample_latent())
                                    .values()]) for _ in range(20000)]).double()
    assert torch.allclose(draws.mean(0), guide.mean.double(), atol=0.02)
    assert torch.allclose(draws.T.cov(), expected, atol=0.01, rtol=0.05)
    seed = guide.sample_latent()
    assert all(torch.equal(a, b) for a, b in zip(guide.weights(seed).values(),
                                                 guide.weights(seed).values(), strict=True))


def test_before_any_collection_a_draw_is_the_iterate():
    guide = guide_of(torch.empty(0, 6), rank=2)
    guide.iterate.data.normal_()
    assert torch.equal(torch.cat([v.flatten() for v in guide.weights(torch.tensor([3])).values()]),
                       guide.iterate.detach())


def test_the_lr_is_the_step_schedule_then_constant_from_swag_start():
    config = TrainConfig(method="swag", epochs=10, swag_start=0.5, swag_lr=0.02)
    assert [learning_rate(config, e) for e in range(10)] == [
        config.lr_at(e) for e in range(5)] + [0.02] * 5


def test_swag_trains_and_evaluates_through_the_cli(tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--train-subset", "60", "--batch-size", "32",
            "--model", "wrn-10-1", "--method", "swag", "--epochs", "2", "--swag-rank", "3",
            "--swag-lr", "0.05", "--out", str(run)]
    assert main([*argv[:-2], "--swag-every", "1", "--out", str(run)]) == 0
    state = load_checkpoint(run / "checkpoint.pt")["guide"]
    assert int(state["collected"]) == 2  # epoch 2 (from swag_start 0.5), both of its steps
    assert state["deviations"].shape[0] == 3 and state["mean"].shape == state["sq_mean"].shape
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert [h["lr"] for h in history] == [0.1, 0.05]
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--samples", "1,4", "--bn-batches", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["method"] == "swag" and len(set(result["x1_draws"])) > 1
    per_epoch = tmp_path / "per-epoch"
    assert main([*argv[:-1], str(per_epoch)]) == 0  # once per epoch, at its end
    assert int(load_checkpoint(per_epoch / "checkpoint.pt")["guide"]["collected"]) == 1
