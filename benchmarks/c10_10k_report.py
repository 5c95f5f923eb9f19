"""Tables and plots of the ``c10-10k`` experiments (issue #6, the paper's experiments on real
CIFAR-10) from whatever ``benchmarks/c10_10k.py`` has finished so far.

Reads ``RESULTS/NAME[.FORM].json`` (one per evaluated run of ``c10_10k.RUNS``) and, for the
analyses that need weights or predictions, the run folders ``RUNS/NAME``. Writes into RESULTS:

- ``table.md``: Table I/IV analogue, one row per evaluation, plus mean ± std over seeds;
- ``error_vs_n_strategies.png``, ``error_vs_n_priors.png``: Fig. 6/7 analogue;
- ``faults.md``: Table V analogue, test points exactly k of 4 z draws (or ensemble members)
  misclassify;
- ``correlations.md``, ``pairs_normal.png``, ``pairs_uniform01.png``: weight correlations within
  and across residual blocks per strategy, and the Fig. 9 pair plots;
- ``reliability.png``: MAP vs the N(0,1) and U(0,1) hypernets x16 vs the 4-member ensemble;
- ``analysis.json``: the analyses' numbers per run name. They need forward passes with BN
  recalibrated per draw (minutes per run), so they are computed once and reused
  (``--refresh`` recomputes them, ``--no-compute`` only reads what is cached).

Missing runs are listed in the outputs, never an error: run it again as more runs finish.

Usage: python benchmarks/c10_10k_report.py [--results benchmarks/results/c10-10k]
           [--runs runs/c10-10k] [--bn-batches K] [--refresh | --no-compute]
           [--weight-draws 1000] [--pairs 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c10_10k import RUNS  # noqa: E402
from runner import finished_epochs  # noqa: E402

from pyro_implicit.analysis import (  # noqa: E402
    PAIR_KINDS,
    WeightRef,
    WeightSelection,
    disagreement,
    draw_probs,
    pair_correlations,
    plot_averaging,
    plot_weight_pairs,
    stacked,
    to_inference_data,
    weight_pairs,
)
from pyro_implicit.inference import TrainConfig  # noqa: E402
from pyro_implicit.inference.analyze import (  # noqa: E402
    FAULT_MODELS,
    analyze,
    is_finished,
    load_runs,
    summarize,
)
from pyro_implicit.inference.config import complete_saved  # noqa: E402
from pyro_implicit.inference.evaluate import X1_DRAWS  # noqa: E402
from pyro_implicit.inference.recipes import PRIOR_NAMES, hypernet_label  # noqa: E402
from pyro_implicit.inference.runs import CONFIG, Run  # noqa: E402

SEED = 0  # as evaluate: the analyses' first draws are the evaluation's draws
MAP_RUN, ENSEMBLE_RUN = "map-s0", "ensemble-s0"
X16_RUNS = ("hypernet-normal-s0", "hypernet-uniform01-s0")  # averaged over 16 in the diagram
MAX_DRAWS = 16
METRICS = ("error", "nll", "ece", "brier")
METHOD_LABELS = {"map": "MAP", "mle": "MLE", "bbb": "BBB", "bayes-hypernet": "Bayesian hypernet",
                 "mc-dropout": "MC dropout", "swag": "SWAG", "laplace": "last-layer Laplace"}
STRATEGY_CURVES = {  # result stem -> legend (Fig. 6: the strategies with their forms)
    "hypernet-normal-s0": "all-in-one, branching",
    "hypernet-blockwise-normal-s0": "block-wise, branching",
    "hypernet-blockwise-normal-s0.parallelizing": "block-wise, parallelizing",
    "hypernet-layerwise-normal-s0": "layer-wise, branching",
    "hypernet-layerwise-normal-s0.widening": "layer-wise, widening",
}
PRIOR_CURVES = {f"hypernet-{p}-s0": f"p(z) = {PRIOR_NAMES[p]}"  # Fig. 7: all-in-one, branching
                for p in ("normal", "uniform", "uniform01", "halfnormal")}
SEED_GROUPS = ("map", "hypernet-normal", "hypernet-uniform01", "hypernet-best")  # NAME-s0, -s1, -s2
FAULT_RUNS = [ENSEMBLE_RUN, *(n for n, (c, _) in RUNS.items() if c.get("method") == "hypernet")]
CORRELATION_RUNS = ("hypernet-normal-s0", "hypernet-blockwise-normal-s0",
                    "hypernet-layerwise-normal-s0", "hypernet-uniform01-s0")
PAIR_PLOTS = {"hypernet-normal-s0": "pairs_normal.png",
              "hypernet-uniform01-s0": "pairs_uniform01.png"}
RELIABILITY = {MAP_RUN: "MAP", **{name: f"hypernet {PRIOR_NAMES[RUNS[name][0]['prior']]}"
                                   for name in X16_RUNS}, ENSEMBLE_RUN: "ensemble"}
# predictive draws per analysed run: 4 for the fault table, all members of the ensemble, 16 for
# the reliability of the hypernets' x16 averages, the one network of MAP
PREDICTIVE = {**{name: FAULT_MODELS for name in FAULT_RUNS},
              ENSEMBLE_RUN: RUNS[ENSEMBLE_RUN][0]["members"],
              **{name: MAX_DRAWS for name in X16_RUNS}, MAP_RUN: 1}
PREDICTIVE_KEYS = ("predictive_draws", "num_test", "fault_table", "averaging", "calibration")


def result_stems() -> list[str]:
    """Every ``NAME[.FORM]`` the driver writes, in its order."""
    return [name + suffix for name, (_, evaluations) in RUNS.items() for suffix in evaluations]


def load_results(folder: Path) -> dict[str, dict]:
    """The result JSONs present in ``folder``, by stem."""
    return {stem: json.loads((folder / f"{stem}.json").read_text())
            for stem in result_stems() if (folder / f"{stem}.json").is_file()}


def run_status(folder: Path) -> str:
    """Where the run folder of a missing result stands, for the lists of what is missing."""
    if is_finished(folder):
        return "trained, evaluation pending"
    if not (folder / CONFIG).is_file():
        return "not started"
    done, epochs = finished_epochs(folder), TrainConfig.load(folder / CONFIG).epochs
    return f"training, epoch {done}/{epochs}" if done else "training"


# --- table.md ---------------------------------------------------------------------------------

def method_label(result: dict) -> str:
    """What a result is, from its config: e.g. "hypernet block-wise N(0,1), parallelizing"."""
    c = complete_saved({"method": result.get("method"), **result.get("config", {})})
    method = c["method"]
    if method == "hypernet":
        label = f"hypernet {c['strategy']} {hypernet_label(TrainConfig(**c))}"
    elif method == "ensemble":
        label = f"ensemble of {c['members']} {METHOD_LABELS.get(c['member_method'], '?')}"
    elif method == "bbb" and c["local_reparam"]:
        label = "BBB, local reparam."
    elif method == "mc-dropout":
        label = f"MC dropout p = {c['drop_rate']}"
    else:
        label = METHOD_LABELS.get(method, str(method))
    form = result.get("form", "branching")
    return label if form == "branching" else f"{label}, {form}"


def largest_n(result: dict) -> str:
    """The largest N evaluated ("16", or "4" for widening)."""
    return max(result["samples"], key=int)


def seconds_per_epoch(result: dict) -> float | None:
    """Median epoch wall time: robust to the epochs slowed by other jobs on the machine."""
    seconds = [h["seconds"] for h in result.get("history", [])]
    return statistics.median(seconds) if seconds else None


def metric_cells(result: dict) -> list[float | None]:
    """error x1, error xN (%), then NLL, ECE and Brier at x1 and xN; None where missing."""
    s = result["samples"]
    n = largest_n(result)

    def value(at: str, key: str) -> float | None:
        v = s.get(at, {}).get(key)
        return None if v is None else (100 * v if key == "error" else v)

    return [value(at, key) for key in METRICS for at in ("1", n)]


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


DIGITS = [2, 2, 3, 3, 3, 3, 3, 3]  # error % x1, xN; NLL, ECE, Brier x1, xN
HEADER = ("| run | method | error x1 % | error x16 % | NLL x1 | NLL x16 | ECE x1 | ECE x16 | "
          "Brier x1 | Brier x16 | s/epoch |")


def md_row(cells: list[str]) -> str:
    """A markdown table row; a ``|`` inside a cell (the half-normal prior's |N(0,1)|) escaped."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def table_row(stem: str, result: dict) -> str:
    """The table.md row of one result; xN cells are marked when N stopped below 16, and a run
    that diverged says so in place of its metrics."""
    if result.get("diverged"):
        epochs = len(result.get("history", []))
        return md_row([stem, method_label(result), f"diverged after {epochs} epochs (non-finite "
                       "loss)", *["-"] * (len(DIGITS) - 1), _fmt(seconds_per_epoch(result), 1)])
    cells = [_fmt(v, d) for v, d in zip(metric_cells(result), DIGITS, strict=True)]
    n = largest_n(result)
    if n != "16":  # widening: N <= 4
        cells[1::2] = [f"{c} (x{n})" for c in cells[1::2]]
    return md_row([stem, method_label(result), *cells, _fmt(seconds_per_epoch(result), 1)])


def spread_row(group: str, results: dict[str, dict]) -> str | None:
    """Mean ± std over the seeds of ``group`` that have results; None for fewer than two."""
    found = {s: results[f"{group}-s{s}"] for s in (0, 1, 2) if f"{group}-s{s}" in results}
    if len(found) < 2:
        return None
    columns = zip(*(metric_cells(r) + [seconds_per_epoch(r)] for r in found.values()),
                  strict=True)
    cells = []
    for values, digits in zip(columns, [*DIGITS, 1], strict=True):
        values = [v for v in values if v is not None]
        cells.append(f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
                     if len(values) >= 2 else "-")
    seeds = ",".join(map(str, found))
    label = f"{method_label(next(iter(found.values())))}, mean ± std"
    return md_row([f"**{group}-s{{{seeds}}}**", label, *cells])


def bn_budget(values: Sequence[int | None]) -> str:
    """How BN was recalibrated, in words, for a set of ``bn_batches`` values."""
    words = sorted({"one pass over the whole training subset" if v is None
                    else f"{v} batches" for v in values})
    return " / ".join(words) if words else "-"


def make_table(results: dict[str, dict], runs: Path) -> str:
    """table.md: rows in the driver's order, seed spreads, footnotes and what is missing."""
    rows = [table_row(stem, results[stem]) for stem in result_stems() if stem in results]
    spreads = [r for r in (spread_row(g, results) for g in SEED_GROUPS) if r is not None]
    missing = [f"`{stem}` ({run_status(runs / stem.split('.')[0])})"
               for stem in result_stems() if stem not in results]
    bn = bn_budget([r.get("bn_batches") for r in results.values()])
    lines = [
        *section("c10-10k: every method (Table I/IV analogue)",
                 "wrn-16-2, 10,000 training images of `imagefolder:../shared/data/cifar10` "
                 "(1,000 per class), full 10,000-image test set, 40 epochs, "
                 "`benchmarks/c10_10k.py`.", HEADER, [*rows, *spreads]), "",
        f"- x1: median over {X1_DRAWS} single draws (ensemble: over members 0, 1, 2, 3, 0); "
        "x16: the average of 16 draws (ensemble: each member 4 times, i.e. the 4-member "
        "average; MAP and MLE are point estimates, x1 = x16). `(x4)`: the form was evaluated "
        "up to N = 4 only (widening at N builds an N-times wider network from N² draws).",
        f"- BN statistics recalibrated for every sample over {bn}.",
        "- s/epoch: the **median** epoch wall time of the run, not the mean: some epochs ran "
        "while other jobs shared the 2 CPU cores and were slowed. The ensemble's epoch is its 4 "
        "members' epochs summed; a `NAME.FORM` row shares the training of `NAME`.",
        "- mean ± std rows: over the seeds listed (sample std).",
    ]
    if missing:
        lines += ["", f"Not available yet ({len(missing)}): " + ", ".join(missing) + "."]
    return "\n".join(lines) + "\n"


# --- error vs N -------------------------------------------------------------------------------

def plot_error_vs_n(results: dict[str, dict], curves: dict[str, str], title: str,
                    path: Path) -> bool:
    """Error against N for the ``curves`` present, MAP dashed; False when there is nothing."""
    present = {label: {int(n): m for n, m in results[stem]["samples"].items()}
               for stem, label in curves.items() if stem in results}
    if not present:
        return False
    fig, ax = plt.subplots(figsize=(5.2, 3.8), layout="constrained")
    plot_averaging(present, "error", ax)
    if MAP_RUN in results:
        ax.axhline(results[MAP_RUN]["samples"]["1"]["error"], color="gray", ls="--", label="MAP")
    ax.legend(fontsize=7)
    ax.set(title=title, ylabel="test error", xlabel="N (posterior samples averaged)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- analyses (analysis.json) -----------------------------------------------------------------

def chosen_pairs(idata) -> dict:
    """The Fig. 9 panels: the most correlated and a typical (median |r|) pair within a block
    and across blocks, with the draws of their weights (the notebooks' choice)."""
    panels = []
    for kind in PAIR_KINDS:
        r, pairs = pair_correlations(idata, kind), weight_pairs(idata, kind)
        if not pairs:
            continue
        order = np.argsort(np.nan_to_num(r, nan=-1.0))
        for what, i in (("max", order[-1]), ("median", order[len(order) // 2])):
            panels.append({"pair": list(pairs[i]), "title": f"{kind}, {what} |r| = {r[i]:.2f}"})
    labels = sorted({label for p in panels for label in p["pair"]})
    w = idata.posterior["w"].sel(weight=labels)
    return {"panels": panels,
            "blocks": dict(zip(labels, map(str, w["block"].values), strict=True)),
            "values": {label: [float(f"{v:.5g}") for v in column]
                       for label, column in zip(labels, stacked(w).T, strict=True)}}


def analyse(run: Run, predictive: int, weights: bool, args: argparse.Namespace) -> dict:
    """One run's analyses: ``predictive`` draws on the test set (faults, calibration; 0 for
    none) and, when ``weights``, weight correlations over ``args.weight_draws`` draws."""
    idata = analyze(run, draws=args.weight_draws if weights else 1,
                    pairs=args.pairs if weights else 1, predictive_draws=predictive,
                    bn_batches=args.bn_batches, seed=SEED, progress=False)
    summary = summarize(idata)
    entry = {}
    if predictive:
        probs = draw_probs(idata)[:FAULT_MODELS]
        entry["predictive"] = {"bn_batches": args.bn_batches, "seed": SEED,
                               **{k: summary[k] for k in PREDICTIVE_KEYS},
                               "fault_disagreement": disagreement(probs)}
    if weights:
        entry["weights"] = {"correlation": summary["correlation"], **chosen_pairs(idata)}
    return entry


def update_analyses(cache: dict, args: argparse.Namespace, path: Path) -> None:
    """Compute the analyses missing from ``cache`` (all with ``--refresh``) for every finished
    run folder, saving ``path`` after each run so an interrupted report keeps its work."""
    todo = {}
    for name in RUNS:
        entry = {} if args.refresh else cache.get(name, {})
        if "predictive" in entry and entry["predictive"]["bn_batches"] != args.bn_batches:
            print(f"note: {name}'s cached predictions used --bn-batches "
                  f"{entry['predictive']['bn_batches']}; --refresh to recompute them")
        needed = PREDICTIVE.get(name, 0)  # recomputed when fewer draws are cached
        predictive = needed if entry.get("predictive", {}).get("predictive_draws", 0) < needed \
            else 0
        weights = name in CORRELATION_RUNS and "weights" not in entry
        if (predictive or weights) and is_finished(args.runs / name):
            todo[name] = predictive, weights
    if not todo:
        return
    for name, run in zip(todo, load_runs([args.runs / n for n in todo]), strict=True):
        print(f"analysing {name} ...", flush=True)
        cache[name] = {**cache.get(name, {}), **analyse(run, *todo[name], args)}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cache, indent=1) + "\n")
        tmp.replace(path)


def cached(cache: dict, name: str, part: str) -> dict | None:
    """The cached ``part`` ("predictive" or "weights") of run ``name``, or None."""
    return cache.get(name, {}).get(part)


def missing_note(names: Sequence[str], cache: dict, part: str, runs: Path) -> list[str]:
    """A line listing the runs in ``names`` whose ``part`` is not in the cache, and why."""
    missing = [f"`{n}` ({run_status(runs / n)})" for n in names if cached(cache, n, part) is None]
    return ["", "Not available yet: " + ", ".join(missing) + "."] if missing else []


def section(title: str, intro: str, header: str, rows: Sequence[str]) -> list[str]:
    """The lines of a report: heading, introduction and a table (its separator from ``header``)."""
    return [f"# {title}", "", intro, "", header, "|" + "---|" * (header.count("|") - 1), *rows]


def cached_table(title: str, intro: str, header: str, names: Sequence[str], part: str,
                 row: Callable[[str, dict], str], cache: dict, runs: Path) -> str:
    """A report with one ``row(name, entry)`` per run of ``names`` whose ``part`` is cached,
    then the runs still missing."""
    entries = {n: cached(cache, n, part) for n in names}
    rows = [row(n, entry) for n, entry in entries.items() if entry is not None]
    return "\n".join(section(title, intro, header, rows)
                     + missing_note(names, cache, part, runs)) + "\n"


def fault_row(name: str, entry: dict) -> str:
    """A faults.md row: test points exactly k of the 4 models misclassify, k = 4..1."""
    counts = entry["fault_table"]["counts"]
    k = entry["fault_table"]["models"]
    models = "members 0-3" if name == ENSEMBLE_RUN else f"z draws 1-{k}"
    wrong = [counts.get(str(j), 0) for j in range(k, 0, -1)]
    return (f"| {name} | {models} | " + " | ".join(map(str, wrong)) +
            f" | {sum(wrong)} | {counts['0']} | {100 * entry['fault_disagreement']:.1f}%"
            f" | {'all' if entry['bn_batches'] is None else entry['bn_batches']} |")


def make_faults(cache: dict, runs: Path) -> str:
    """faults.md: counts of test points exactly k of the 4 models misclassify, per run."""
    return cached_table(
        "c10-10k: quadruple faults (Table V analogue)",
        "Test points (of the full test set) that exactly k of 4 models misclassify: 4 z "
        "draws of each hypernetwork posterior (evaluation seed 0: the first 4 draws of its "
        "evaluation), the 4 members of the MAP ensemble. Disagreement: mean pairwise "
        "fraction of test points on which two of the 4 predict different classes. BN "
        "recalibrated per draw (`all`: one pass over the training subset).",
        "| run | models | 4 wrong | 3 wrong | 2 wrong | 1 wrong | ≥ 1 wrong | all right | "
        "disagreement | BN batches |",
        FAULT_RUNS, "predictive", fault_row, cache, runs)


def correlation_row(name: str, entry: dict) -> str:
    """A correlations.md row: mean |r| within and across blocks of one run."""
    c, changes = entry["correlation"], RUNS[name][0]
    return md_row([name, changes["strategy"], PRIOR_NAMES[changes["prior"]],
                   *(_fmt(c[k], 3) for k in ("within", "across", "independent")),
                   str(c["draws"]), str(c["within_pairs"])])


def make_correlations(cache: dict, runs: Path) -> str:
    """correlations.md: mean |r| within and across residual blocks, per strategy."""
    return cached_table(
        "c10-10k: weight correlations per z-sharing strategy",
        "Mean |Pearson r| over the posterior draws of random pairs of scalar kernel "
        "weights, both in one residual block or in two different blocks. `independent`: "
        "the mean |r| two independent weights show with as many draws (the noise floor).",
        "| run | z sharing | p(z) | within a block | across blocks | independent | draws | "
        "pairs |",
        CORRELATION_RUNS, "weights", correlation_row, cache, runs)


def plot_pairs(entry: dict, title: str, path: Path) -> None:
    """The Fig. 9 pair plot from the cached draws of the chosen weights."""
    labels = list(entry["values"])
    selection = WeightSelection(tuple(map(WeightRef.parse, labels)),
                                tuple(entry["blocks"][label] for label in labels),
                                {k: np.zeros((0, 2), dtype=np.int64) for k in PAIR_KINDS})
    idata = to_inference_data(selection, np.array([entry["values"][label] for label in labels]).T)
    with warnings.catch_warnings():  # deprecation notices from inside ArviZ
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=matplotlib.MatplotlibDeprecationWarning)
        fig = plot_weight_pairs(idata, [tuple(p["pair"]) for p in entry["panels"]], title=title,
                                pair_titles=[p["title"] for p in entry["panels"]])
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability_bins(cache: dict, path: Path) -> bool:
    """Reliability diagram of the cached averages of MAP, the hypernets x16 and the ensemble;
    False when none is cached."""
    entries = {name: cached(cache, name, "predictive") for name in RELIABILITY}
    entries = {name: e for name, e in entries.items() if e is not None}
    if not entries:
        return False
    fig, ax = plt.subplots(figsize=(4.6, 4.6), layout="constrained")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for name, entry in entries.items():
        cal = entry["calibration"]
        bins = {k: np.array(v, dtype=float) for k, v in cal["reliability"].items()}
        keep = bins["count"] > 0
        ax.plot(bins["confidence"][keep], bins["accuracy"][keep], marker="o", ms=3,
                label=f"{RELIABILITY[name]} x{entry['predictive_draws']} (error "
                      f"{100 * cal['error']:.1f}%, ECE {cal['ece']:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="c10-10k reliability (15 bins)")
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- main -------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    """Update the cached analyses, then write (and print) every table and plot."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/c10-10k"))
    p.add_argument("--runs", type=Path, default=Path("runs/c10-10k"))
    p.add_argument("--bn-batches", type=int, default=None,
                   help="BN recalibration batches per draw (default: the whole subset, as "
                        "evaluate)")
    p.add_argument("--weight-draws", type=int, default=1000,
                   help="posterior draws for the weight correlations (no data pass)")
    p.add_argument("--pairs", type=int, default=1000, help="random weight pairs of each kind")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--refresh", action="store_true", help="recompute the cached analyses")
    mode.add_argument("--no-compute", action="store_true",
                      help="load no run folder: use the cached analyses only")
    args = p.parse_args(argv)
    out = args.results
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(out)
    cache_path = out / "analysis.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    if not args.no_compute:
        update_analyses(cache, args, cache_path)

    written = []
    for name, text in (("table.md", make_table(results, args.runs)),
                       ("faults.md", make_faults(cache, args.runs)),
                       ("correlations.md", make_correlations(cache, args.runs))):
        (out / name).write_text(text)
        print(text)
        written.append(name)
    for name, curves, title in (
            ("error_vs_n_strategies.png", STRATEGY_CURVES, "z sharing and averaging forms"),
            ("error_vs_n_priors.png", PRIOR_CURVES, "priors (all-in-one, branching)")):
        if plot_error_vs_n(results, curves, f"c10-10k: {title}", out / name):
            written.append(name)
    for name, file in PAIR_PLOTS.items():
        entry = cached(cache, name, "weights")
        if entry is not None:
            plot_pairs(entry, name, out / file)
            written.append(file)
    if plot_reliability_bins(cache, out / "reliability.png"):
        written.append("reliability.png")
    print(f"wrote {', '.join(written)} to {out}")


if __name__ == "__main__":
    main()
