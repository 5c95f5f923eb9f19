"""benchmarks/c10_10k.py: the ensemble's members are the map runs of seeds 0-3, linked rather
than trained twice, a member whose configuration differs is refused, and a run that diverges is
recorded as such while the driver goes on."""

import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.ensemble import member_config
from pyro_implicit.inference.runs import load_run
from pyro_implicit.inference.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import c10_10k as driver  # noqa: E402

TINY = dict(model="wrn-10-1", data="digits", epochs=1, batch_size=64)


def test_protocol_ensemble_members_are_the_map_seed_runs():
    ensemble = driver.config_for("ensemble-s0", "some/data")
    for m in range(3):
        assert member_config(ensemble, m) == driver.config_for(f"map-s{m}", "some/data")


def test_linked_members_train_once_and_form_the_ensemble(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "RUNS", {})  # tiny configs, not the protocol's
    map0 = fit(TrainConfig(**TINY, method="map", seed=0), tmp_path / "map-s0", progress=False)
    trained = (tmp_path / "map-s0" / "checkpoint.pt").read_bytes()
    config = TrainConfig(**TINY, method="ensemble", members=4, member_method="map")
    driver.link_members("ens", config, tmp_path)
    for m in range(4):
        link = tmp_path / "ens" / "members" / str(m)
        assert link.is_symlink() and link.resolve() == (tmp_path / f"map-s{m}").resolve()
    pyro.clear_param_store()
    fit(config, tmp_path / "ens", progress=False)
    assert (tmp_path / "map-s0" / "checkpoint.pt").read_bytes() == trained  # not retrained
    map1 = load_run(tmp_path / "map-s1")
    assert map1.config == member_config(config, 1)
    ensemble = load_run(tmp_path / "ens")
    for m, run in enumerate((map0, map1)):
        weights = ensemble.guide.weights(torch.tensor([m]))
        for name, param in run.model.net.named_parameters():
            torch.testing.assert_close(weights[name], param.detach())


def test_member_with_another_config_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(driver, "RUNS", {})
    fit(TrainConfig(**TINY, method="map", seed=7), tmp_path / "map-s1", progress=False)
    config = TrainConfig(**TINY, method="ensemble", members=4, member_method="map")
    with pytest.raises(ValueError, match=r"member 1 is not .*map-s1.*'seed': \(1, 7\)"):
        driver.link_members("ens", config, tmp_path)
    assert not (tmp_path / "ens").exists() and not (tmp_path / "map-s0").exists()  # nothing made


def test_a_diverged_run_is_recorded_once_and_reported(tmp_path, monkeypatch):
    import c10_10k_report as report
    import runner

    calls = []

    def diverging_fit(config, out, resume=False, progress=None):
        calls.append(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text('{"history": [{"seconds": 19.0}, {"seconds": 21.0}]}')
        raise FloatingPointError("non-finite loss in epoch 3, step 5 (global step 161)")

    monkeypatch.setattr(runner, "fit", diverging_fit)
    config = TrainConfig(**TINY, method="bayes-hypernet")
    results = tmp_path / "results"
    for _ in range(2):  # the second call finds the recorded result and trains nothing
        out = runner.run_and_evaluate("bayes-hypernet-s0", config, tmp_path / "runs", results)
    assert len(calls) == 1
    recorded = out[""]
    assert recorded["diverged"].startswith("non-finite loss in epoch 3")
    assert len(recorded["history"]) == 2 and recorded["config"]["method"] == "bayes-hypernet"
    row = report.table_row("bayes-hypernet-s0", recorded)
    assert "diverged after 2 epochs" in row and row.endswith("| 20.0 |")
    assert row.count(" | ") == 2 + len(report.DIGITS)  # as many cells as a finished run's row


def test_laplace_row_is_fitted_to_the_map_run_of_its_seed(tmp_path):
    import runner

    runs, results = tmp_path / "runs", tmp_path / "results"
    config, source = driver.post_hoc_source(TrainConfig(**TINY, method="laplace"), runs)
    assert source == runs / "map-s0" and config.from_run == str(source)
    assert driver.post_hoc_source(TrainConfig(**TINY, method="map"), runs)[1] is None
    runner.run_and_evaluate("map-s0", TrainConfig(**TINY, method="map"), runs, results,
                            {"": {"samples": (1,), "bn_batches": 1}})
    out = runner.run_and_evaluate("laplace-s0", config, runs, results,
                                  {"": {"samples": (1, 4), "bn_batches": 1}})[""]
    assert out["method"] == "laplace" and "probit" in out and out["samples"]["4"]["nll"] > 0
    assert len(out["history"]) == TINY["epochs"]  # the source's training, none of its own


def test_uncertainty_driver_trains_what_is_missing_sources_first(tmp_path, monkeypatch):
    import c10_10k_uncertainty as uncertainty

    runs = {"map-s0": (dict(method="map"), {"": {}}),
            "laplace-s0": (dict(method="laplace"), {"": {}})}
    monkeypatch.setattr(driver, "RUNS", runs)
    monkeypatch.setattr(driver, "config_for",
                        lambda name, data: TrainConfig(**TINY, **runs[name][0]))
    assert uncertainty.ensure_trained("laplace-s0", tmp_path, "digits")
    assert (tmp_path / "map-s0" / "checkpoint.pt").is_file()  # its source, trained first
    assert load_run(tmp_path / "laplace-s0").config.from_run == str(tmp_path / "map-s0")
    assert not uncertainty.ensure_trained("hypernet-best-s0", tmp_path, "digits")


def test_uncertainty_runs_name_each_configuration_once():
    import c10_10k_uncertainty as uncertainty

    names = uncertainty.RUNS
    configs = [driver.config_for(name, "digits") for name in names]
    twins = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))
             if configs[i] == configs[j]]
    assert not twins  # each pair would be trained and evaluated twice


def test_uncertainty_driver_keeps_the_member_curve_so_later_evaluations_need_no_members(
        tmp_path, monkeypatch):
    import shutil

    import c10_10k_uncertainty as uncertainty

    from pyro_implicit.inference.evaluate import add_dee, evaluate

    runs, results = tmp_path / "runs", tmp_path / "results"
    monkeypatch.setattr(uncertainty, "DEE_MEMBERS", ("map-s0", "map-s1"))
    monkeypatch.setattr(uncertainty, "BN_BATCHES", 1)
    fit(TrainConfig(**TINY, method="map", seed=0), runs / "map-s0", progress=False)
    data = load_run(runs / "map-s0").data
    held_out = data.test_x[:40], data.test_y[:40]
    assert uncertainty.dee_curve(runs, results, held_out) is None  # map-s1 not trained yet
    fit(TrainConfig(**TINY, method="map", seed=1), runs / "map-s1", progress=False)
    curve = uncertainty.dee_curve(runs, results, held_out)
    assert curve["runs"] == ["map-s0", "map-s1"] and curve["seeds"] == [0, 1]
    assert len(curve["calibrated_nll"]) == 2
    members = [load_run(runs / m) for m in ("map-s0", "map-s1")]
    direct = evaluate(members[0], (1,), bn_batches=1, calibration=held_out,
                      dee_members=members)  # the members loaded, as evaluate --dee-runs does
    shutil.rmtree(runs / "map-s1")  # a fresh checkout: the curve is read, not recomputed
    assert uncertainty.dee_curve(runs, results, held_out) == curve
    kept = add_dee(evaluate(members[0], (1,), bn_batches=1, calibration=held_out), curve)
    assert kept["samples"]["1"]["dee"] == direct["samples"]["1"]["dee"]
    for key in ("nll", "calibrated_nll", "error"):
        assert kept["dee_members"][key] == pytest.approx(direct["dee_members"][key])
