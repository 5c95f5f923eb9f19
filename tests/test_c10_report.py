"""benchmarks/c10_10k_report.py on two tiny runs and hand-made result JSONs: the tables carry
the JSON numbers, missing runs are listed, and the analyses are computed once and cached."""

import json
import sys
from pathlib import Path

import pyro
import pytest

from pyro_implicit.inference.config import TrainConfig
from pyro_implicit.inference.evaluate import sample_probs
from pyro_implicit.inference.recipes import HYPERNET
from pyro_implicit.inference.runs import load_run
from pyro_implicit.inference.train import fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import c10_10k_report as report  # noqa: E402

TINY = dict(model="wrn-10-1", data="digits", epochs=2, batch_size=32, z_dim=4, h_dim=4)
FAST = ["--bn-batches", "4", "--weight-draws", "30", "--pairs", "10"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Tiny stand-ins for three c10-10k runs, under their driver names."""
    root = tmp_path_factory.mktemp("runs")
    for name, changes in (("hypernet-normal-s0", HYPERNET),  # the paper's, as that run
                          ("map-s0", {"method": "map"}), ("ensemble-s0", {"method": "ensemble"})):
        pyro.clear_param_store()
        fit(TrainConfig(**{**changes, **TINY}), root / name, progress=False)  # tiny sizes
    return root


def result(method: str, errors: dict[int, float], form: str = "branching", seed: int = 0,
           **config) -> dict:
    """A result JSON as the driver writes it (only the keys the report reads)."""
    return {"samples": {str(n): {"error": e, "nll": 1 + e, "ece": e / 10, "brier": e / 2}
                        for n, e in errors.items()},
            "form": form, "method": method, "bn_batches": None, "x1_draws": [],
            "config": {"method": method, "seed": seed, **config},
            "history": [{"seconds": s} for s in (10.0, 11.0, 95.0)]}


def write(folder: Path, stem: str, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(data))


def test_report_tables_plots_and_cached_analyses(runs, tmp_path, monkeypatch):
    out = tmp_path / "results"
    errors = {1: 0.5, 2: 0.47, 4: 0.45, 8: 0.44, 16: 0.4321}
    write(out, "hypernet-normal-s0", result("hypernet", errors, strategy="all-in-one",
                                            prior="normal"))
    write(out, "map-s0", result("map", {n: 0.30 for n in errors}))
    write(out, "map-s1", result("map", {n: 0.32 for n in errors}, seed=1))
    write(out, "hypernet-layerwise-normal-s0.widening",
          result("hypernet", {1: 0.6, 2: 0.55, 4: 0.5123}, form="widening",
                 strategy="layer-wise", prior="normal"))
    report.main(["--results", str(out), "--runs", str(runs), *FAST])

    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| hypernet-normal-s0 |"))
    assert row.split(" | ")[1:5] == ["hypernet all-in-one N(0,1)", "50.00", "43.21", "1.500"]
    assert row.endswith("| 11.0 |")  # the median epoch, not the mean
    assert "| 51.23 (x4) |" in table and "layer-wise N(0,1), widening" in table
    assert "| 31.00 ± 1.41 | 31.00 ± 1.41 |" in table  # map seeds 0 and 1
    assert "`bbb-s0` (not started)" in table and "`hypernet-layerwise-normal-s0` (" in table

    analysis = json.loads((out / "analysis.json").read_text())
    assert set(analysis) == {"hypernet-normal-s0", "map-s0", "ensemble-s0"}
    faults = analysis["hypernet-normal-s0"]["predictive"]["fault_table"]
    assert faults["models"] == 4 and analysis["hypernet-normal-s0"]["predictive"][
        "predictive_draws"] == 16
    run = load_run(runs / "hypernet-normal-s0")
    pyro.set_rng_seed(0)  # the report's draws: those of evaluate, with the same BN budget
    wrong = sample_probs(run, run.data.test_x, 4, bn_batches=4).argmax(-1) != run.data.test_y
    assert sum(faults["counts"][str(k)] for k in range(1, 5)) == int(wrong.any(0).sum())
    assert faults["counts"] == {str(k): int((wrong.sum(0) == k).sum()) for k in range(5)}
    assert 0 < faults["counts"]["0"] < faults["counts"]["4"]  # the tiny posterior learned a bit
    assert sum(faults["counts"].values()) == len(run.data.test_y)
    assert f"| hypernet-normal-s0 | z draws 1-4 | {faults['counts']['4']} |" in (
        out / "faults.md").read_text()
    ensemble = analysis["ensemble-s0"]["predictive"]
    assert ensemble["predictive_draws"] == ensemble["fault_table"]["models"] == 4
    assert "| ensemble-s0 | members 0-3 |" in (out / "faults.md").read_text()
    assert "`ensemble-s0` (trained, evaluation pending)" in table
    correlations = (out / "correlations.md").read_text()
    assert "| hypernet-normal-s0 | all-in-one | N(0,1) |" in correlations
    assert "| 30 | 10 |" in correlations
    for name in ("error_vs_n_strategies.png", "error_vs_n_priors.png", "pairs_normal.png",
                 "reliability.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "pairs_uniform01.png").exists()

    def no_analysis(*args, **kwargs):
        raise AssertionError("cached analyses were recomputed")

    monkeypatch.setattr(report, "analyze", no_analysis)
    (out / "pairs_normal.png").unlink()
    report.main(["--results", str(out), "--runs", str(runs), *FAST])
    assert (out / "pairs_normal.png").is_file()  # redrawn from the cache


def test_report_with_nothing_finished(tmp_path, capsys):
    out = tmp_path / "results"
    report.main(["--results", str(out), "--runs", str(tmp_path / "none")])
    table = (out / "table.md").read_text()
    assert f"Not available yet ({len(report.result_stems())})" in table
    assert not list(out.glob("*.png")) and not (out / "analysis.json").exists()
    assert "wrote table.md, faults.md, correlations.md" in capsys.readouterr().out


def test_table_row_escapes_the_half_normal_priors_bars():
    row = report.table_row("hypernet-halfnormal-s0", result(
        "hypernet", {1: 0.28, 16: 0.27}, strategy="all-in-one", prior="halfnormal"))
    assert "\\|N(0,1)\\|" in row
    cells = row.replace("\\|", "").strip("|").split("|")  # the unescaped bars split the cells
    assert len(cells) == 2 + len(report.DIGITS) + 1  # name, method, metrics, s/epoch


def test_every_method_of_the_table_has_a_readable_label():
    """The table names each run's method from its config, old configs (no generator) too."""
    labels = {method: report.method_label({"config": {"method": method}})
              for method in ("map", "swag", "laplace", "bayes-hypernet")}
    assert labels == {"map": "MAP", "swag": "SWAG", "laplace": "last-layer Laplace",
                      "bayes-hypernet": "Bayesian hypernet"}
    rank1 = {"config": {**HYPERNET, "prior": "onehot", "z_draws": 4, "generator": "rank1"}}
    assert report.method_label(rank1) == "hypernet all-in-one onehot, 4 z per step, rank1 " \
                                         "generator"
    old = {k: v for k, v in HYPERNET.items() if k != "generator"}
    assert report.method_label({"config": old}) == "hypernet all-in-one N(0,1)"
