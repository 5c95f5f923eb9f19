"""The hypernet's search options: p(z) location/scale, K draws per step (groups and mixture),
the spread schedule from an anchor draw, the output layers' learning-rate factor and the
repulsion between draws."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from conftest import make_imagefolder, tiny_batch, tiny_model
from pyro_implicit import HyperNetworks, ImplicitGuide, ImplicitMAP, PointGuide
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.data import imagefolder_holdout
from pyro_implicit.inference.methods import build, validate, z_spread
from pyro_implicit.inference.train import make_loss, make_optimizer, train_step
from pyro_implicit.objective import weight_similarity
from pyro_implicit.priors import PRIORS, prior_quantiles, z_prior


@pytest.mark.parametrize("prior", list(PRIORS))
def test_location_scale_prior_is_the_moved_law(prior):
    base = z_prior(prior, (4000, 3)).sample()
    torch.manual_seed(0)
    moved = z_prior(prior, (4000, 3), loc=2.0, scale=0.5).sample()
    assert torch.allclose(moved.mean(), 2.0 + 0.5 * base.mean(), atol=0.03)
    assert torch.allclose(moved.std(), 0.5 * base.std(), atol=0.03)
    u = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    expected = 2.0 + 0.5 * PRIORS[prior](torch.zeros((), dtype=torch.float64),
                                          torch.ones((), dtype=torch.float64)).icdf(u)
    assert torch.allclose(prior_quantiles(prior, u, 2.0, 0.5), expected)


def test_guide_keeps_the_paper_prior_by_default_and_its_state_dict_unchanged():
    model, guide = tiny_model()
    assert guide.z_distribution().base_dist.__class__.__name__ == "Normal"
    assert "anchor" not in guide.state_dict()
    other = ImplicitGuide(model, z_dim=4, h_dim=6, z_loc=1.0, z_scale=0.25)
    z = torch.stack([other.sample_latent() for _ in range(2000)])
    assert abs(z.mean() - 1.0) < 0.02 and abs(z.std() - 0.25) < 0.02


def test_anchor_comes_from_its_seed_and_leaves_the_global_stream_alone():
    model, _ = tiny_model()
    state = torch.get_rng_state()
    a = ImplicitGuide(model, z_dim=4, h_dim=6, anchor_seed=1)
    after_guide = torch.get_rng_state()
    torch.set_rng_state(state)
    HyperNetworks([s.shape for s in model.sites], 4, 6)  # all a guide should draw
    assert torch.equal(after_guide, torch.get_rng_state())
    b = ImplicitGuide(model, z_dim=4, h_dim=6, anchor_seed=1)
    c = ImplicitGuide(model, z_dim=4, h_dim=6, anchor_seed=2)
    assert torch.equal(a.anchor, b.anchor) and not torch.equal(a.anchor, c.anchor)


def test_spread_zero_is_one_network_and_one_is_the_prior():
    _, guide = tiny_model()
    z1, z2 = guide.sample_latent(), guide.sample_latent()
    full = guide.weights(z1)
    guide.spread = 0.0
    w1, w2, at_anchor = guide.weights(z1), guide.weights(z2), guide.weights(guide.anchor)
    for name in w1:
        assert torch.equal(w1[name], w2[name]) and torch.equal(w1[name], at_anchor[name])
    guide.spread = 0.5
    half = guide.weights(z1)
    guide.spread = 1.0
    for name in full:
        assert torch.equal(guide.weights(z1)[name], full[name])
        assert not torch.equal(half[name], full[name])


def test_onehot_guide_is_z_dim_kernel_sets_and_trains():
    """K-anchor p(z): every draw is one of z_dim kernel sets, g(e_k), distinct for each k."""
    model, guide = tiny_model(prior="onehot")  # z_dim 4
    pyro.set_rng_seed(0)
    sets: dict[int, dict[str, torch.Tensor]] = {}
    for _ in range(60):
        z = guide.sample_latent()
        w = guide.weights(z)
        k = int(z.argmax())
        for name, kernel in sets.setdefault(k, w).items():
            assert torch.equal(kernel, w[name])
    assert sorted(sets) == [0, 1, 2, 3]
    name = guide.site_names[0]
    assert all(not torch.equal(sets[0][name], sets[k][name]) for k in (1, 2, 3))
    x, y = tiny_batch(8, classes=5)
    optimizer = torch.optim.SGD([*model.parameters(), *guide.parameters()], lr=0.1)
    before = guide.hypernet.output.detach().clone()
    loss = ImplicitMAP()(model, guide, x, y)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(guide.hypernet.output, before)


def test_spread_schedule_holds_then_opens_linearly():
    config = TrainConfig(z_hold=2, z_warmup=4, epochs=10)
    steps = 10
    assert z_spread(config, 0, 0, steps) == 0.0
    assert z_spread(config, 1, 9, steps) == 0.0
    assert z_spread(config, 2, 0, steps) == pytest.approx(1 / 40)
    assert z_spread(config, 4, 0, steps) == pytest.approx(21 / 40)
    assert z_spread(config, 5, 9, steps) == 1.0
    assert z_spread(config, 9, 5, steps) == 1.0
    assert z_spread(TrainConfig(), 0, 0, steps) == 1.0


def _loss(loss_fn, model, guide, x, y, seed=5):
    pyro.set_rng_seed(seed)
    return loss_fn.loss_and_logits(model, guide, x, y)


def test_a_batch_smaller_than_the_draws_takes_one_group_per_image():
    model, guide = tiny_model()
    x, y = tiny_batch(3)  # an epoch's last batch, say
    four = _loss(ImplicitMAP(0.0, draws=4), model, guide, x, y)
    three = _loss(ImplicitMAP(0.0, draws=3), model, guide, x, y)
    assert four[0].item() == pytest.approx(three[0].item(), rel=1e-6)
    assert torch.equal(four[1], three[1])


def test_groups_average_the_per_datum_loss_of_each_group_under_its_own_draw():
    model, guide = tiny_model()
    x, y = tiny_batch(12)
    loss, logits = _loss(ImplicitMAP(0.0, draws=3), model, guide, x, y)
    pyro.set_rng_seed(5)
    single = ImplicitMAP(0.0)
    parts = [single.loss_and_logits(model, guide, xs, ys)
             for xs, ys in zip(x.tensor_split(3), y.tensor_split(3), strict=True)]
    assert torch.allclose(loss, sum(p[0] for p in parts) / 3)
    assert torch.allclose(logits, torch.cat([p[1] for p in parts]))
    assert logits.shape == (12, 5)


def test_mixture_is_minus_the_log_of_the_mean_likelihood_of_the_draws():
    model, guide = tiny_model()
    x, y = tiny_batch(8)
    loss, _ = _loss(ImplicitMAP(0.0, draws=3, mode="mixture"), model, guide, x, y)
    pyro.set_rng_seed(5)
    per_draw = []
    for _ in range(3):
        z = pyro.sample("z", guide.z_distribution())
        logits = model.logits(x, guide.weights(z))
        per_draw.append(torch.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1))
    expected = -(torch.logsumexp(torch.stack(per_draw), 0) - math.log(3)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)
    # never above the mean of the draws' losses (Jensen), equal for identical draws
    assert loss <= -torch.stack(per_draw).mean() + 1e-6


def _cos2(a, b):  # 0 for a zero kernel (every hidden unit of a tiny hypernet off)
    a, b = a.detach().flatten(), b.detach().flatten()
    return float((a @ b) ** 2 / (a.square().sum() * b.square().sum()).clamp_min(1e-30))


def test_repulsion_adds_beta_times_the_mean_cos2_to_a_fresh_draw():
    model, guide = tiny_model()
    x, y = tiny_batch(8)
    plain, _ = _loss(ImplicitMAP(0.0), model, guide, x, y)
    loss_fn = ImplicitMAP(0.0, repulsion=0.5)
    loss, _ = _loss(loss_fn, model, guide, x, y)
    pyro.set_rng_seed(5)  # the step's draw, then the fresh one
    w = guide.weights(pyro.sample("z", guide.z_distribution()))
    other = guide.weights(guide.sample_latent())
    similarity = sum(_cos2(w[n], other[n]) for n in w) / len(w)
    assert 0 < similarity < 1
    assert loss_fn.terms["similarity"].item() == pytest.approx(similarity, rel=1e-5)
    assert loss.item() == pytest.approx(plain.item() + 0.5 * similarity, rel=1e-5)
    # with groups the fresh draws come after the groups' own: the data term is unchanged
    grouped = ImplicitMAP(0.0, draws=2, repulsion=1.0)
    _loss(grouped, model, guide, x, y)
    assert grouped.terms["data"].item() == pytest.approx(
        _loss(ImplicitMAP(0.0, draws=2), model, guide, x, y)[0].item(), rel=1e-6)
    assert 0 < grouped.terms["similarity"].item() < 1


def test_repulsion_gradient_turns_the_draws_apart():
    torch.manual_seed(0)
    model, guide = tiny_model(prior="uniform01")  # near-copies: cos^2 close to 1
    optimizer = torch.optim.SGD(guide.parameters(), lr=5.0)
    x, _ = tiny_batch(8)

    @torch.no_grad()
    def mean_cos2():
        torch.manual_seed(123)
        pairs = [(guide.weights(guide.sample_latent()), guide.weights(guide.sample_latent()))
                 for _ in range(64)]
        return sum(_cos2(a[n], b[n]) for a, b in pairs for n in a) / (64 * len(pairs[0][0]))

    before = mean_cos2()
    for _ in range(40):  # the term alone, through the step's draw only
        optimizer.zero_grad()
        weight_similarity(guide, poutine.trace(guide).get_trace(x)).backward()
        optimizer.step()
    assert before > 0.7 and mean_cos2() < before - 0.2


@pytest.mark.parametrize("changes", [dict(repulsion=2.0), dict(bn_groups=4)])
def test_one_draw_options_step_fused_as_unfused(changes):
    """The repulsion term's gradient, and every BatchNorm group's (ghost BN), reach theta
    through the step's one kernel generation, so the fused SGD update stays on and makes the
    unfused step."""
    config = validate(TrainConfig(model="wrn-10-1", z_dim=4, h_dim=6, prior="uniform01", z_draws=1,
                                  **changes))  # one draw: the fused step's case
    x, y = tiny_batch(16)
    after = []
    for fuse in (True, False):
        pyro.set_rng_seed(0)
        model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
        optimizer = make_optimizer(config, model, guide, fuse=fuse)
        assert (guide.hypernet.fused_sgd_group() is not None) == fuse
        for step in range(2):
            pyro.set_rng_seed(10 + step)
            train_step(model, guide, make_loss(config), optimizer, x, y)
        after.append(guide.hypernet.output.detach().clone())
    torch.testing.assert_close(after[0], after[1], rtol=1e-5, atol=1e-6)


def test_repulsion_needs_a_latent_and_is_refused_below_zero():
    model, _ = tiny_model()
    with pytest.raises(ValueError, match="repulsion needs a guide with a latent draw"):
        ImplicitMAP(0.0, repulsion=1.0).loss_and_logits(model, PointGuide(), *tiny_batch(4))
    for bad in (-1.0, float("inf")):
        with pytest.raises(ValueError, match="repulsion must be a finite number >= 0"):
            ImplicitMAP(repulsion=bad)
    with pytest.raises(ValueError, match="repulsion must be a finite number >= 0"):
        validate(TrainConfig(repulsion=-0.5))


def test_draw_options_are_refused_with_one_line():
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        ImplicitMAP(draws=0)
    with pytest.raises(ValueError, match="choose one of: groups, mixture"):
        ImplicitMAP(draws=2, mode="mix")
    for knobs, match in [({"z_hold": 3, "z_warmup": 2, "epochs": 5}, "must leave epochs"),
                         ({"z_scale": 0.0}, "z_scale must be"),
                         ({"z_loc": float("nan")}, "z_loc must be"),
                         ({"z_draw_mode": "x"}, "unknown z draw mode"),
                         ({"z_draws": 0}, "z_draws must be"),
                         ({"theta_lr_scale": -1.0}, "theta_lr_scale must be")]:
        with pytest.raises(ValueError, match=match):
            validate(TrainConfig(**knobs))


def test_theta_lr_scale_puts_the_output_layers_in_their_own_group():
    config = validate(TrainConfig(model="wrn-10-1", z_dim=4, h_dim=6, theta_lr_scale=0.25))
    model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
    optimizer = make_optimizer(config, model, guide)
    scaled = [g for g in optimizer.param_groups if g["lr_scale"] != 1]
    assert len(scaled) == 1 and scaled[0]["params"] == [guide.hypernet.output]
    assert scaled[0]["lr_scale"] == 0.25 and scaled[0]["weight_decay"] == config.weight_decay
    # one step at lr_scale 0.25 moves the output layers by 1/4 of the unscaled step
    x, y = tiny_batch(16)
    moves = {}
    for scale in (1.0, 0.25):
        pyro.set_rng_seed(0)
        c = validate(TrainConfig(model="wrn-10-1", z_dim=4, h_dim=6, theta_lr_scale=scale,
                                 momentum=0.0, weight_decay=0.0))
        model, guide = build(c, num_classes=5, in_channels=3, num_data=64)
        opt = make_optimizer(c, model, guide)
        for group in opt.param_groups:
            group["lr"] = c.lr * group["lr_scale"]
        before = guide.hypernet.output.detach().clone()
        pyro.set_rng_seed(1)
        train_step(model, guide, make_loss(c), opt, x, y)
        moves[scale] = guide.hypernet.output.detach() - before
    assert torch.allclose(moves[0.25], 0.25 * moves[1.0], atol=1e-7)


def test_several_draws_train_unfused_and_lower_the_loss():
    for mode in ("groups", "mixture"):
        config = validate(TrainConfig(model="wrn-10-1", z_dim=4, h_dim=6, z_draws=2,
                                      z_draw_mode=mode))
        model, guide = build(config, num_classes=5, in_channels=3, num_data=64)
        optimizer = make_optimizer(config, model, guide)
        assert guide.hypernet.fused_sgd_group() is None  # backward runs once per draw
        x, y = tiny_batch(16)
        loss_fn = make_loss(config)
        before = _loss(loss_fn, model, guide, x, y)[0].item()
        for _ in range(4):
            train_step(model, guide, loss_fn, optimizer, x, y)
        assert _loss(loss_fn, model, guide, x, y)[0].item() < before


def test_cli_trains_with_every_search_option(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--train-subset", "60", "--epochs", "3",
                 "--batch-size", "32", "--model", "wrn-10-1", "--z-dim", "4", "--h-dim", "4",
                 "--z-loc", "1", "--z-scale", "0.5", "--z-draws", "2", "--z-hold", "1",
                 "--z-warmup", "1", "--theta-lr-scale", "0.5", "--repulsion", "0.25",
                 "--out", str(out)]) == 0
    saved = TrainConfig.load(out / "config.json")
    assert (saved.z_loc, saved.z_scale, saved.z_draws, saved.z_hold, saved.z_warmup,
            saved.theta_lr_scale, saved.repulsion) == (1.0, 0.5, 2, 1, 1, 0.5, 0.25)
    assert main(["train", "--z-draw-mode", "nope", "--data", "digits",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "unknown z draw mode 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_holdout_is_the_last_files_of_each_class_and_never_the_training_subset(tmp_path):
    root = make_imagefolder(tmp_path / "data", train_per_class=10)
    x, y = imagefolder_holdout(f"imagefolder:{root}", 3, train_subset=21)
    assert x.shape == (9, 3, 8, 8) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    with pytest.raises(ValueError, match="too few for 7 training and 4 held-out"):
        imagefolder_holdout(f"imagefolder:{root}", 4, train_subset=21)
    with pytest.raises(ValueError, match="needs a train_subset"):
        imagefolder_holdout(f"imagefolder:{root}", 3)


def test_losses_report_their_data_and_prior_terms_apart():
    model, guide = tiny_model()
    x, y = tiny_batch(8)
    loss_fn = ImplicitMAP(weight_decay=5e-4)
    total = loss_fn(model, guide, x, y)
    terms = loss_fn.terms
    assert torch.allclose(total, terms["data"] + terms["prior"])
    assert terms["prior"] == pytest.approx(loss_fn.prior_value(model, guide))
    assert not terms["data"].requires_grad and terms["data"] > 0


def test_train_records_the_prior_term_beside_the_loss(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--train-subset", "60", "--epochs", "2",
                 "--batch-size", "32", "--model", "wrn-10-1", "--z-dim", "4", "--h-dim", "4",
                 "--out", str(out)]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert all(h["prior"] > 0 for h in history)
    printed = capsys.readouterr()
    assert "(+ prior" in printed.out + printed.err
