"""benchmarks/c10_10k_uncertainty_report.py on real evaluate output of tiny runs: one table per
kind (in-domain with the deep-ensemble equivalent, shift per severity, OOD) and the plot."""

import json
import sys
from pathlib import Path

import pytest

from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.evaluate import evaluate, ood_images
from pyro_implicit.inference.runs import load_run
from pyro_implicit.inference.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import c10_10k_uncertainty_report as report  # noqa: E402

TINY = dict(model="wrn-10-1", data="digits", train_subset=120, epochs=1, batch_size=32,
            z_dim=4, h_dim=4)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uncertainty")
    for name, method, seed in (("map-s0", "map", 0), ("map-s1", "map", 1),
                               ("hypernet-normal-s0", "hypernet", 0)):
        fit(TrainConfig(**TINY, method=method, seed=seed), folder / name, progress=False)
    members = [load_run(folder / "map-s0"), load_run(folder / "map-s1")]
    out = {}
    for name in ("map-s0", "hypernet-normal-s0"):
        run = load_run(folder / name)
        out[name] = json.loads(json.dumps(evaluate(
            run, (1, 4), bn_batches=1, progress=False, shift="corruptions",
            corruptions=["gaussian_noise", "contrast"], severities=[1, 3], shift_subset=60,
            cache_dir=folder / "cache", ood=ood_images("digits", run), dee_members=members)))
    return out


def test_tables_hold_every_kind_at_the_largest_n(results, tmp_path):
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))
    report.main(["--results", str(tmp_path)])
    table = (tmp_path / "table.md").read_text()
    assert "## In-domain" in table and "## Shift" in table and "## Out of distribution" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    hyper = summary["hypernet-normal-s0"]
    assert hyper["n"] == 4
    assert hyper["in_domain"]["dee"] == results["hypernet-normal-s0"]["samples"]["4"]["dee"]
    assert set(hyper["shift"]) == {"1", "3"}
    r = results["hypernet-normal-s0"]
    expected = (r["shift"]["gaussian_noise"]["3"]["4"]["error"]
                + r["shift"]["contrast"]["3"]["4"]["error"]) / 2
    assert hyper["shift"]["3"]["error"] == pytest.approx(expected)
    assert hyper["ood"] == r["ood"]["4"]
    assert "| map-s0 | 4 |" in table and "Not evaluated yet:" in table
    assert (tmp_path / "shift_vs_severity.png").stat().st_size > 0


def test_the_driver_evaluates_a_run_with_every_kind(tmp_path, monkeypatch):
    import c10_10k_uncertainty as driver

    monkeypatch.setenv("HOME", str(tmp_path))  # the corruption cache goes under ~/.cache
    monkeypatch.setattr(driver, "SAMPLES", (1, 2))
    monkeypatch.setattr(driver, "DEE_MEMBERS", ("map-s0",))
    monkeypatch.setattr(driver, "BN_BATCHES", 1)
    monkeypatch.setattr(driver, "CORRUPTIONS", ["fog", "pixelate"])
    monkeypatch.setattr(driver, "SEVERITIES", [2])
    for name, method in (("map-s0", "map"), ("hyper", "hypernet")):
        fit(TrainConfig(**TINY, method=method), tmp_path / name, progress=False)
    data = load_run(tmp_path / "hyper").data
    held_out = (data.test_x[:60], data.test_y[:60])
    curve = driver.dee_curve(tmp_path, tmp_path / "results", held_out)
    result = driver.evaluate_uncertainty("hyper", tmp_path, "digits", held_out, curve)
    assert result["name"] == "hyper" and result["config"]["method"] == "hypernet"
    assert result["dee_members"]["runs"] == ["map-s0"] and "dee" in result["samples"]["2"]
    assert result["num_shift"] == min(driver.SHIFT_SUBSET, result["num_test"])
    assert set(result["shift"]) == {"fog", "pixelate", "mean"} and set(result["ood"]) == {"1", "2"}
    assert result["calibration"].startswith("validation split") and result["num_calibration"] == 60
