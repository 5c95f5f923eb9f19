"""Accuracy against training cost on the ``c10-10k`` protocol: MAP, the 4-MAP ensemble, the
paper's hypernets and the best hypernet, at 40 epochs and (where run) 120 epochs, and the
baselines trained in one run.

Training cost is counted in MAP training runs of 40 epochs: epochs / 40 x members x the step's
cost over a MAP step, as measured in interleaved runs (``benchmarks/method_steps.py``; its
``--hypernet-options`` runs for the hypernet's options). Wall times recorded by the runs
themselves are not used: the runs shared the cores with other work. Gap closed: MAP (the mean
of its seeds at 40 epochs) = 0, the ensemble of 4 = 1, in x16 error and NLL. Deep-ensemble
equivalent (DEE): the number of averaged MAP members whose NLL the run's matches, on the
ensemble run's own curve (N = 1, 2, 4 members; 3 interpolated between 2 and 4).

Writes ``RESULTS/cost.md`` (the table) and ``RESULTS/cost.png`` (test error and NLL against
training cost; the 40- and 120-epoch runs of a method joined, which answers whether longer
training closes the hypernets' gap).

Usage: python benchmarks/c10_10k_cost_report.py [--results benchmarks/results/c10-10k]
           [--speed benchmarks/results/speed]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from pyro_implicit.inference.outputs import write_atomic, write_json, write_text
from pyro_implicit.uncertainty import deep_ensemble_equivalent

EPOCHS = 40  # the protocol's: one MAP training run
LONGER = ", 120 epochs"  # the label suffix of a group's longer runs
# (label, run names: one row over their seeds)
GROUPS: list[tuple[str, list[str]]] = [
    ("MAP", ["map-s0", "map-s1", "map-s2"]),
    ("MAP" + LONGER, ["map-e120-s0"]),
    ("ensemble of 4 MAP", ["ensemble-s0"]),
    ("paper hypernet U(0,1)", ["hypernet-uniform01-s0", "hypernet-uniform01-s1",
                               "hypernet-uniform01-s2"]),
    ("paper hypernet U(0,1)" + LONGER, ["hypernet-uniform01-e120-s0"]),
    ("paper hypernet N(0,1)", ["hypernet-normal-s0", "hypernet-normal-s1", "hypernet-normal-s2"]),
    ("paper hypernet N(0,1)" + LONGER, ["hypernet-normal-e120-s0"]),
    ("best hypernet", ["hypernet-best-s0", "hypernet-best-s1", "hypernet-best-s2"]),
    ("rank-1 hypernet, U(0,1)", [f"hypernet-rank1-uniform01-s{m}" for m in range(3)]),
    ("rank-1 hypernet, 4 anchors", [f"hypernet-rank1-onehot4-s{m}" for m in range(3)]),
    ("rank-1 hypernet, N(0,1)", [f"hypernet-rank1-normal-s{m}" for m in range(3)]),
    # the baselines trained in one run (laplace is fitted to map-s0 and left out)
    ("Bayesian hypernet (Krueger et al.)", ["bayes-hypernet-s0"]),
    ("MC dropout", ["mc-dropout-s0"]),
    ("SWAG", ["swag-s0"]),
    ("BBB, local reparam.", ["bbb-s0"]),
]
MAP, ENSEMBLE = "MAP", "ensemble of 4 MAP"
# the hypernet options' step ratios: the screening's options, then the rank-1 generator's
# (timed later, in a run of their own: method_steps.py --hypernet-options --only ...); a name
# timed in both keeps the first file's ratio
OPTION_STEPS = ("hypernet_options_steps.json", "hypernet_rank1_steps.json")


def step_ratio(config: dict, methods: dict, options: dict) -> float:
    """A training step's cost over a MAP step for ``config``: map and ensemble members 1, the
    hypernet's options from the ``--hypernet-options`` run, other methods from the main one."""
    method = config["method"]
    if method in ("map", "ensemble", "swag"):  # swag: MAP's SGD step, one collection an epoch
        return 1.0
    if method == "bbb" and config.get("local_reparam"):
        return methods["bbb --local-reparam"]
    if method != "hypernet":
        return methods[method]
    if config.get("repulsion", 0):
        return options["hypernet --prior uniform01 --repulsion 1"]
    rank1 = " --generator rank1" if config.get("generator", "full") == "rank1" else ""
    if config.get("z_draws", 1) > 1:
        key = ("hypernet --z-draws 2 --z-draw-mode mixture" if config["z_draw_mode"] == "mixture"
               else "hypernet --z-draws 4")
        return options[key + rank1]
    return options["hypernet" + rank1]


def best_n(result: dict) -> str:
    """The largest N evaluated (the ensemble's 4 members: N = 4)."""
    if result["config"]["method"] == "ensemble":
        return str(result["config"]["members"])
    return str(max(int(n) for n in result["samples"]))


def member_curve(ensemble: dict) -> list[float]:
    """NLL of 1..4 averaged members from the ensemble run's N = 1, 2, 4 (member N draws the
    members cyclically, so N <= 4 averages the first N); 3 members linearly between 2 and 4,
    which is what DEE's linear interpolation between 2 and 4 would give."""
    nll = {int(n): s["nll"] for n, s in ensemble["samples"].items()}
    return [nll[1], nll[2], (nll[2] + nll[4]) / 2, nll[4]]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarise(results: dict[str, dict], methods: dict, options: dict) -> dict[str, dict]:
    """Per group with at least one finished run: seeds, epochs, cost, and x1 / xN error, xN NLL
    and ECE (mean and std over seeds), gap closed where MAP and the ensemble are present."""
    rows = {}
    for label, names in GROUPS:
        done = [results[n] for n in names if n in results]
        if not done:
            continue
        config = done[0]["config"]
        members = config["members"] if config["method"] == "ensemble" else 1
        row = {"runs": [r["name"] for r in done], "epochs": config["epochs"],
               "cost": config["epochs"] / EPOCHS * members * step_ratio(config, methods, options)}
        for key, n, metric in (("x1_error", "1", "error"), ("error", None, "error"),
                               ("nll", None, "nll"), ("ece", None, "ece")):
            row[key] = mean_std([r["samples"][n or best_n(r)][metric] for r in done])
        rows[label] = row
    if MAP in rows and ENSEMBLE in rows:
        curve = member_curve(results[rows[ENSEMBLE]["runs"][0]])
        for row in rows.values():
            row["gap_closed"] = {k: (rows[MAP][k][0] - row[k][0])
                                 / (rows[MAP][k][0] - rows[ENSEMBLE][k][0])
                                 for k in ("error", "nll")}
            row["deep_ensemble_equivalent"] = deep_ensemble_equivalent(row["nll"][0], curve)
    return rows


def _cell(value: tuple[float, float | None], digits: int, percent: bool = False) -> str:
    mean, std = value
    scale = 100 if percent else 1
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def make_table(rows: dict[str, dict], missing: list[str]) -> str:
    lines = ["# c10-10k: accuracy against training cost", "",
             "| run | epochs | seeds | cost (MAP runs) | x1 err % | best-N err % | NLL | ECE | "
             "gap closed err / NLL | DEE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        gap = r.get("gap_closed")
        lines.append("| " + " | ".join([
            label, str(r["epochs"]), str(len(r["runs"])), f"{r['cost']:.2f}",
            _cell(r["x1_error"], 2, True), _cell(r["error"], 2, True), _cell(r["nll"], 3),
            _cell(r["ece"], 3), f"{gap['error']:.2f} / {gap['nll']:.2f}" if gap else "—",
            f"{r['deep_ensemble_equivalent']:.2f}" if gap else "—"]) + " |")
    lines += ["", "best N: 16 draws for the hypernets, the 4 members for the ensemble, 1 for MAP. "
              "Cost: epochs / 40 x members x step cost over MAP's (each measured in an "
              "interleaved run, benchmarks/results/speed/; the rank-1 generator's in a run of its "
              "own). Test set, mean ± std over seeds. DEE: averaged MAP "
              "members of equal NLL (the ensemble run's 1, 2, 4; 3 interpolated), 1 to 4."]
    if missing:
        lines.append(f"Not finished yet: {', '.join(missing)}.")
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict], path: Path) -> None:
    """Test error and NLL (best N) against training cost; a method's epochs joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    families: dict[str, list[str]] = {}
    for label in rows:
        families.setdefault(label.removesuffix(LONGER), []).append(label)
    for ax, key, name in ((axes[0], "error", "test error (best N)"), (axes[1], "nll", "test NLL")):
        for family, labels in families.items():
            xs = [rows[lb]["cost"] for lb in labels]
            ys = [rows[lb][key][0] * (100 if key == "error" else 1) for lb in labels]
            errs = [(rows[lb][key][1] or 0) * (100 if key == "error" else 1) for lb in labels]
            ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=family)
        ax.set_xlabel("training cost (MAP runs of 40 epochs)")
        ax.set_ylabel(name + (" %" if key == "error" else ""))
        ax.set_xscale("log", base=2)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/c10-10k"))
    p.add_argument("--speed", type=Path, default=Path("benchmarks/results/speed"))
    args = p.parse_args(argv)
    names = {n for _, group in GROUPS for n in group}
    results = {path.stem: json.loads(path.read_text())
               for path in sorted(args.results.glob("*.json")) if path.stem in names}
    methods = json.loads((args.speed / "method_steps.json").read_text())["over_map"]
    options = {name: ratio for file in reversed(OPTION_STEPS) if (args.speed / file).is_file()
               for name, ratio in json.loads((args.speed / file).read_text())["over_map"].items()
               if name != "map"}
    rows = summarise(results, methods, options)
    missing = [n for _, names in GROUPS for n in names if n not in results]
    table = make_table(rows, missing)
    write_text(args.results / "cost.md", table)
    write_json(args.results / "cost.json", rows)
    plot(rows, args.results / "cost.png")
    print(table)


if __name__ == "__main__":
    main()
