import json
import warnings
from pathlib import Path

import arviz as az
import matplotlib
import numpy as np
import pyro
import pytest
import torch

from conftest import tiny_model
from pyro_implicit import freeze_posterior
from pyro_implicit.analysis import (
    WeightLayout,
    WeightRef,
    abs_correlations,
    averaging_curve,
    disagreement,
    disagreement_matrix,
    draw_probs,
    draw_weights,
    fault_table,
    independent_level,
    mean_abs_correlation,
    observed_labels,
    plot_averaging,
    plot_reliability,
    plot_weight_pairs,
    reliability,
    select_weights,
    selective_curves,
    to_inference_data,
    weight_correlations,
    weight_pairs,
)
from pyro_implicit.inference.analyze import (
    POSTERIOR,
    SUMMARY,
    analyze,
    is_finished,
    load_runs,
    open_runs,
    summarize,
)
from pyro_implicit.inference.cli import main
from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.train import fit
from pyro_implicit.metrics import ece
from pyro_implicit.uncertainty import predictive_entropy

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[1]


# --- correlations -----------------------------------------------------------------------------

def test_perfectly_correlated_and_independent_samples():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1000, 1))
    draws = np.hstack([base, 3 * base + 1, -2 * base, rng.normal(size=(1000, 2))])
    r = abs_correlations(draws, np.array([[0, 1], [0, 2], [3, 4], [0, 3]]))
    assert r[:2] == pytest.approx([1, 1])
    assert r[2] < 0.1 and r[3] < 0.1
    independent = rng.normal(size=(1000, 400))
    pairs = np.arange(400).reshape(-1, 2)
    mean = mean_abs_correlation(independent, pairs)
    assert mean == pytest.approx(independent_level(1000), rel=0.2)  # ~0.025: independent = ~0
    assert mean_abs_correlation(draws, np.array([[0, 1], [1, 2]])) == pytest.approx(1)


def test_independent_level_matches_simulation_and_constant_weights_are_skipped():
    rng = np.random.default_rng(1)
    sims = [abs(np.corrcoef(rng.normal(size=(2, 16)))[0, 1]) for _ in range(4000)]
    assert independent_level(16) == pytest.approx(np.mean(sims), rel=0.05)
    assert np.isnan(independent_level(2))
    draws = np.hstack([np.ones((5, 1)), rng.normal(size=(5, 2))])
    assert np.isnan(abs_correlations(draws, np.array([[0, 1]]))[0])
    assert mean_abs_correlation(draws, np.array([[0, 1]])) is None
    assert mean_abs_correlation(draws[:2], np.array([[1, 2]])) is None  # 2 draws: undefined


def test_weight_labels_parse_and_selection_respects_blocks():
    model, _ = tiny_model()
    layout = WeightLayout.of(model)
    ref = WeightRef.parse("stage1.0.conv1.weight[0, 0, 1, 2]")
    assert ref == WeightRef("stage1.0.conv1.weight", (0, 0, 1, 2))
    assert ref.label == "stage1.0.conv1.weight[0,0,1,2]"
    sel = select_weights(layout, num_pairs=200, weights=[ref.label], seed=3)
    assert sel.refs[0] == ref and len(set(sel.refs)) == len(sel.refs)
    blocks = np.array(sel.blocks)
    within, across = sel.pairs["within"], sel.pairs["across"]
    assert within.shape == across.shape == (200, 2)
    assert (blocks[within[:, 0]] == blocks[within[:, 1]]).all()
    assert (blocks[across[:, 0]] != blocks[across[:, 1]]).all()
    assert (within[:, 0] != within[:, 1]).all()
    for bad, message in (("conv1[0]", "unknown weight site"),
                         ("stage1.0.conv1.weight[99,0,0,0]", "out of range"),
                         ("stage1.0.conv1.weight", "of the form")):
        with pytest.raises(ValueError, match=message):
            select_weights(layout, 1, [bad])


def test_draws_are_the_generated_weights_and_match_freeze_posterior_latents():
    model, guide = tiny_model(strategy="block-wise")
    sel = select_weights(WeightLayout.of(model), num_pairs=20)
    pyro.set_rng_seed(5)
    values, latents = draw_weights(model, guide, sel.refs, 6)
    assert values.shape == (6, len(sel.refs)) and latents.shape == (6, *guide.latent_shape)
    kernels = guide.weights(latents[4])
    for col, ref in enumerate(sel.refs[:10]):
        assert values[4, col] == kernels[ref.site][ref.index]
    pyro.set_rng_seed(5)
    frozen = freeze_posterior(model, guide, 3)
    assert torch.equal(frozen.latents, latents[:3])


def test_block_wise_draws_are_independent_across_blocks_and_correlated_within():
    model, guide = tiny_model(strategy="block-wise", prior="uniform01")
    sel = select_weights(WeightLayout.of(model), num_pairs=300, seed=1)
    values, _ = draw_weights(model, guide, sel.refs, 400)
    level = independent_level(400)
    across = mean_abs_correlation(values, sel.pairs["across"])
    within = mean_abs_correlation(values, sel.pairs["within"])
    assert across == pytest.approx(level, rel=0.25)  # separate z per block: independent
    assert within > 3 * level


# --- diversity and calibration -----------------------------------------------------------------

def test_fault_table_and_disagreement_by_hand():
    labels = np.array([0, 1, 2, 0, 1])
    preds = np.array([[0, 1, 2, 1, 0],    # wrong on 3, 4
                      [0, 1, 0, 1, 0],    # wrong on 2, 3, 4
                      [1, 1, 2, 1, 1],    # wrong on 0, 3
                      [0, 0, 2, 1, 1]])   # wrong on 1, 3
    # misclassified by: point 0 -> 1 model, 1 -> 1, 2 -> 1, 3 -> 4, 4 -> 2
    assert fault_table(preds, labels).tolist() == [0, 3, 1, 0, 1]
    probs = np.eye(3)[preds]  # one-hot probabilities give the same table
    table = fault_table(probs, labels)
    assert table.tolist() == [0, 3, 1, 0, 1] and table.sum() == len(labels)
    matrix = disagreement_matrix(preds)
    assert matrix[0, 1] == pytest.approx(1 / 5) and matrix[0, 2] == pytest.approx(2 / 5)
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 0)
    assert disagreement(preds) == pytest.approx(matrix[np.triu_indices(4, 1)].mean())
    assert disagreement(preds[:1]) is None
    with pytest.raises(ValueError, match="test points"):
        fault_table(preds, labels[:3])


def test_fault_table_sums_to_test_points_on_random_models():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(10), size=(4, 500))
    table = fault_table(probs, rng.integers(0, 10, 500))
    assert len(table) == 5 and table.sum() == 500


def test_reliability_bins_give_the_ece_and_averaging_uses_disjoint_groups():
    rng = np.random.default_rng(3)
    probs = torch.from_numpy(rng.dirichlet(np.ones(4), size=(4, 300)))
    labels = torch.from_numpy(rng.integers(0, 4, 300))
    bins = reliability(probs[0], labels)
    assert bins["count"].sum() == 300
    keep = bins["count"] > 0
    gap = (bins["count"][keep] * np.abs(bins["confidence"][keep] - bins["accuracy"][keep])).sum()
    assert gap / 300 == pytest.approx(ece(probs[0], labels))
    curve = averaging_curve(probs, labels)
    assert sorted(curve) == [1, 2, 4]
    pair_errors = [(probs[i:i + 2].mean(0).argmax(-1) != labels).double().mean().item()
                   for i in (0, 2)]
    assert curve[2]["error"] == pytest.approx(np.mean(pair_errors))
    with pytest.raises(ValueError, match="averaging sizes"):
        averaging_curve(probs, labels, [8])


# --- InferenceData -----------------------------------------------------------------------------

def test_inference_data_layout_and_netcdf_round_trip(tmp_path):
    model, guide = tiny_model()
    sel = select_weights(WeightLayout.of(model), num_pairs=5)
    values, latents = draw_weights(model, guide, sel.refs, 7)
    probs = torch.softmax(torch.randn(3, 4, 5), -1)
    labels = torch.tensor([0, 4, 2, 1])
    idata = to_inference_data(sel, values, latents, guide.groups, probs, labels,
                              ["a", "b", "c", "d", "e"], [10, 11, 12, 13], {"method": "x"})
    path = tmp_path / "p.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == {"posterior", "posterior_predictive", "log_likelihood",
                                  "observed_data", "constant_data", "uncertainty"}
    u = back["uncertainty"]
    np.testing.assert_allclose(u["predictive_entropy"].values,
                               predictive_entropy(probs).numpy(), rtol=1e-6)
    np.testing.assert_allclose(u["predictive_entropy"] - u["expected_entropy"],
                               u["mutual_information"], atol=1e-9)
    assert u["mutual_information"].dims == ("test_point",) and (u["mutual_information"] > 0).all()
    post = back.posterior
    assert post["w"].dims == ("chain", "draw", "weight")
    assert post["z"].dims == ("chain", "draw", "z_group", "z_dim")
    assert post.sizes["draw"] == 7 and post.sizes["chain"] == 1
    assert list(post["weight"].values) == sel.labels
    assert list(post["block"].values) == list(sel.blocks)
    assert list(post["site"].values) == [r.site for r in sel.refs]
    assert list(post["z_group"].values) == ["all"]
    assert back.posterior_predictive["probs"].dims == ("chain", "draw", "test_point", "class")
    assert list(back.posterior_predictive["class"].values) == list("abcde")
    assert back.log_likelihood["y"].dims == ("chain", "draw", "test_point")
    assert back.observed_data["y"].dims == ("test_point",)
    assert list(back.observed_data["test_point"].values) == [10, 11, 12, 13]
    assert back.constant_data["pairs"].dims == ("pair", "end")
    assert post.attrs["method"] == "x"
    np.testing.assert_allclose(post["w"].values[0], values.numpy())
    np.testing.assert_allclose(draw_probs(back), probs.numpy(), rtol=1e-6)
    assert observed_labels(back).tolist() == labels.tolist()
    loglik = back.log_likelihood["y"].values[0]
    np.testing.assert_allclose(loglik, np.log(probs.numpy()[:, range(4), labels.numpy()]),
                               rtol=1e-5)
    assert len(weight_pairs(back, "within")) == 5
    first = weight_pairs(back, "within")[0]
    assert first == tuple(sel.labels[i] for i in sel.pairs["within"][0])
    corr = weight_correlations(back)
    assert corr["draws"] == 7 and corr["within_pairs"] == corr["across_pairs"] == 5
    with warnings.catch_warnings():  # WAIC warns about 3 draws; it still has to run
        warnings.simplefilter("ignore")
        assert np.isfinite(az.waic(back).elpd_waic)  # ArviZ reads the log_likelihood group
    with pytest.raises(ValueError, match="nothing to export"):
        to_inference_data()


@pytest.mark.filterwarnings("ignore::matplotlib.MatplotlibDeprecationWarning")  # inside ArviZ
def test_plots_draw(tmp_path):
    model, guide = tiny_model()
    sel = select_weights(WeightLayout.of(model), num_pairs=3)
    values, _ = draw_weights(model, guide, sel.refs, 50)
    probs = torch.softmax(torch.randn(4, 30, 5), -1)
    labels = torch.randint(0, 5, (30,))
    idata = to_inference_data(sel, values, probs=probs, labels=labels)
    fig = plot_weight_pairs(idata, weight_pairs(idata, "within")[:2], title="pairs",
                            pair_titles=["a", "b"])
    assert len(fig.subfigs) == 2
    plot_reliability({"x1": probs[0], "x4": probs.mean(0)}, labels)
    plot_averaging({"run": averaging_curve(probs, labels)})
    fig.savefig(tmp_path / "pairs.png")


# --- runs and the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    tiny = dict(model="wrn-10-1", data="digits", train_subset=100, epochs=1, batch_size=32,
                z_dim=4, h_dim=4)
    for name, extra in (("hyper", {"strategy": "layer-wise"}), ("map0", {"method": "map"}),
                        ("map1", {"method": "map", "seed": 1})):
        pyro.clear_param_store()
        fit(TrainConfig(**tiny, **extra), root / name, progress=False)
    return root


def test_analyze_run_ensemble_and_point(runs):
    hyper, map0, map1 = load_runs([runs / "hyper", runs / "map0", runs / "map1"])
    idata = analyze(hyper, draws=30, pairs=10, predictive_draws=5, bn_batches=1, test_subset=40)
    assert idata.posterior.sizes["draw"] == 30 and idata.posterior_predictive.sizes["draw"] == 5
    assert idata.posterior.sizes["z_group"] == len(hyper.guide.groups)
    assert idata.observed_data.sizes["test_point"] == 40
    assert idata.posterior.attrs["strategy"] == "layer-wise"
    point = analyze(map0, draws=30, pairs=10, bn_batches=1, test_subset=40)
    assert point.posterior.sizes["draw"] == 1 and "z" not in point.posterior
    # one network has no epistemic part; the hypernet's disagreeing draws have
    assert (point["uncertainty"]["mutual_information"] == 0).all()
    assert summarize(point)["uncertainty"]["epistemic"] == 0
    assert summarize(idata)["uncertainty"]["epistemic"] > 0
    curves = selective_curves(idata)
    assert set(curves) == {"max_prob", "entropy", "mutual_information"}
    coverage, risk = curves["entropy"]
    assert coverage[-1] == 1 and risk.mean().item() == pytest.approx(
        summarize(idata)["uncertainty"]["aurc"]["entropy"])
    assert "strategy" not in point.posterior.attrs
    net = map0.model.net
    first = WeightRef.parse(str(point.posterior["weight"].values[0]))
    assert point.posterior["w"].values[0, 0, 0] == net.get_parameter(first.site)[first.index]
    ensemble = analyze([map0, map1], pairs=10, bn_batches=1, test_subset=40)
    assert ensemble.posterior.sizes["draw"] == 2 and ensemble.posterior.attrs["members"] == 2
    summary = summarize(ensemble)
    assert summary["fault_table"]["models"] == 2
    assert sum(summary["fault_table"]["counts"].values()) == 40
    assert summary["correlation"]["within"] is None  # two draws define no correlation
    weights_only = analyze(hyper, draws=10, pairs=5, predictive_draws=0)
    assert set(weights_only.groups()) == {"posterior", "constant_data"}
    assert set(summarize(weights_only)) == {"draws", "correlation"}


def test_open_runs_checks_what_each_run_is(runs, tmp_path):
    assert is_finished(runs / "hyper") and not is_finished(tmp_path)
    opened = open_runs({"hyper": {"strategy": "layer-wise"}, "map1": {"method": "map"}}, runs)
    assert opened["map1"].config.seed == 1
    with pytest.raises(ValueError, match="expected {'strategy': 'all-in-one'}"):
        open_runs({"hyper": {"strategy": "all-in-one"}}, runs)


def test_analyze_cli_writes_documented_files(runs, tmp_path, capsys):
    out = tmp_path / "analysis"
    assert main(["analyze", str(runs / "hyper"), "--out", str(out), "--draws", "40",
                 "--pairs", "20", "--predictive-draws", "6", "--bn-batches", "1",
                 "--weight", "stage2.0.conv1.weight[0,0,1,1]", "--seed", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    summary = json.loads((out / SUMMARY).read_text())
    assert {"runs", "method", "model", "strategy", "prior", "members", "seed", "bn_batches",
            "draws", "predictive_draws", "num_test", "correlation", "fault_table",
            "disagreement", "averaging", "calibration", "uncertainty"} <= set(summary)
    assert set(summary["uncertainty"]) == {"predictive_entropy", "aleatoric", "epistemic",
                                           "aurc"}
    assert (out / "selective.png").stat().st_size > 0
    assert summary["draws"] == 40 and summary["predictive_draws"] == 6
    assert set(summary["correlation"]) == {"draws", "within", "across", "within_pairs",
                                           "across_pairs", "independent"}
    table = summary["fault_table"]
    assert table["models"] == 4 and list(table["counts"]) == ["0", "1", "2", "3", "4"]
    assert sum(table["counts"].values()) == summary["num_test"] == 450
    assert set(summary["averaging"]) == {"1", "2", "4", "6"}
    assert {"error", "nll", "ece", "brier", "reliability"} == set(summary["calibration"])
    idata = az.from_netcdf(str(out / POSTERIOR))
    assert "stage2.0.conv1.weight[0,0,1,1]" in idata.posterior["weight"].values
    assert json.loads(idata.posterior.attrs["runs"]) == [str(runs / "hyper")]
    assert summary["calibration"]["error"] == pytest.approx(
        summary["averaging"]["6"]["error"])


@pytest.mark.parametrize("args, message", [
    (["{tmp}/nowhere"], "not a run folder"),
    (["{runs}/hyper", "--weight", "stage9.conv.weight[0]"], "unknown weight site"),
    (["{runs}/hyper", "--weight", "oops"], "of the form"),
    (["{runs}/hyper", "--test-subset", "100000"], "test subset"),
])
def test_analyze_cli_errors(runs, tmp_path, capsys, args, message):
    argv = [a.format(tmp=tmp_path, runs=runs) for a in args]
    assert main(["analyze", *argv, "--out", str(tmp_path / "o"), "--draws", "3",
                 "--pairs", "2", "--predictive-draws", "1", "--bn-batches", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-implicit: error:") and message in err


def test_analyze_cli_rejects_non_positive_numbers(runs, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["analyze", str(runs / "hyper"), "--out", "x", "--draws", "0"])
    assert stop.value.code == 2 and "positive integer" in capsys.readouterr().err


def test_analysis_package_ships_with_the_install():
    packages = (ROOT / "pyproject.toml").read_text().split("packages = [", 1)[1].split("]", 1)[0]
    assert '"pyro_implicit.analysis"' in packages
