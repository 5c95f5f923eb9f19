"""Tables and plots of the ``c10-10k-screen`` runs (``benchmarks/c10_10k_screen.py``), on the
validation split, from whatever has finished so far.

Every run is reported against MAP (0) and the 4-member MAP ensemble of the same protocol (1) as
"gap closed" in error and NLL at x16, and as its deep-ensemble equivalent (DEE): the number of
averaged MAP members, interpolated on the 1..4 member curve, whose NLL its x16 NLL matches.
The member curve needs the MAP runs' validation probabilities: computed from their run folders
once and kept in ``RESULTS/map-ensemble.json``.

Selection: among the candidates (hypernet runs other than the paper's references; MAP controls
such as ``map-bn-groups4`` are reported, never selected) whose x1 error is within
``--tolerance`` (1 point) of MAP's,
the lowest x16 NLL first; if there are none, the candidates on the (x1 error, x16 NLL) Pareto
front, lowest x16 NLL first (said in the table).

Writes ``RESULTS/table.md``, ``RESULTS/summary.json`` and ``RESULTS/nll_vs_error.png``.

Usage: python benchmarks/c10_10k_screen_report.py [--results DIR] [--runs DIR] [--tolerance P]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c10_10k_screen import (  # noqa: E402
    BN_BATCHES,
    C10_10K,
    ENSEMBLE,
    HOLDOUT_PER_CLASS,
    RUNS,
)

from pyro_implicit import classification_metrics  # noqa: E402
from pyro_implicit.inference.data import imagefolder_holdout  # noqa: E402
from pyro_implicit.inference.evaluate import sample_probs  # noqa: E402
from pyro_implicit.inference.outputs import write_json, write_text  # noqa: E402
from pyro_implicit.inference.runs import is_finished, load_run  # noqa: E402
from pyro_implicit.uncertainty import deep_ensemble_equivalent, gap_closed  # noqa: E402

REFERENCES = ("map", "hypernet-normal", "hypernet-uniform01")


def is_candidate(name: str) -> bool:
    """Whether run ``name`` is a hypernet option under test: not a reference, not one of the
    MAP seeds and not a control or baseline of another method (a run of RUNS whose
    ``method`` is not ``hypernet``, such as the MAP controls)."""
    return (name not in REFERENCES and name not in ENSEMBLE
            and RUNS.get(name, {}).get("method", "hypernet") == "hypernet")


def member_curve(runs: Path, cache: Path) -> dict | None:
    """{"error", "nll"} lists for averages of the first 1..4 MAP members on the validation split,
    and the members' own mean (``single``); from the cache, else from the run folders when all
    are finished, else None."""
    if cache.is_file():
        return json.loads(cache.read_text())
    if not all(is_finished(runs / name) for name in ENSEMBLE):
        return None
    held_x, held_y = imagefolder_holdout(C10_10K["data"], HOLDOUT_PER_CLASS,
                                         C10_10K["train_subset"])
    probs = []
    for name in ENSEMBLE:
        run = load_run(runs / name)
        probs.append(sample_probs(run, held_x, 1, BN_BATCHES, progress=False)[0])
    single = [classification_metrics(p, held_y) for p in probs]
    averages = [classification_metrics(torch.stack(probs[:k]).mean(0), held_y)
                for k in range(1, len(probs) + 1)]
    curve = {"members": list(ENSEMBLE),
             "error": [m["error"] for m in averages], "nll": [m["nll"] for m in averages],
             "single": {k: statistics.fmean(m[k] for m in single) for k in ("error", "nll")}}
    write_json(cache, curve)
    return curve


def summarise(results: dict[str, dict], curve: dict | None, tolerance: float) -> dict:
    """Per run: x1/x16 error, x16 NLL and ECE, the averaging gain, s/epoch, gap closed and DEE;
    and the selection."""
    rows = {}
    for name, r in results.items():
        if r.get("diverged"):
            rows[name] = {"diverged": r["diverged"]}
            continue
        x1, x16 = r["samples"]["1"], r["samples"]["16"]
        row = {"x1_error": x1["error"], "x16_error": x16["error"], "x16_nll": x16["nll"],
               "x16_ece": x16["ece"], "averaging_gain": x1["error"] - x16["error"],
               "seconds_per_epoch": statistics.median(h["seconds"] for h in r["history"]),
               "changes": RUNS.get(name, {})}
        if curve is not None:
            single, full = curve["single"], {k: curve[k][-1] for k in ("error", "nll")}
            row["gap_closed"] = {k: gap_closed(row[f"x16_{k}"], single[k], full[k])
                                 for k in ("error", "nll")}
            row["deep_ensemble_equivalent"] = deep_ensemble_equivalent(row["x16_nll"],
                                                                       curve["nll"])
        rows[name] = row
    base = rows.get("map", {}).get("x1_error")
    candidates = [n for n, r in rows.items() if "x1_error" in r and is_candidate(n)]
    eligible = sorted((n for n in candidates
                       if base is None or rows[n]["x1_error"] <= base + tolerance / 100),
                      key=lambda n: rows[n]["x16_nll"])
    rule = "matched"
    if not eligible:  # none as accurate as MAP: the (x1 error, x16 NLL) Pareto front instead
        rule = "pareto"
        eligible = sorted(pareto_front({n: rows[n] for n in candidates}),
                          key=lambda n: rows[n]["x16_nll"])
    papers = [n for n in REFERENCES if n != "map" and "x1_error" in rows.get(n, {})]
    beaten = {n: [ref for ref in papers if dominates(rows[ref], rows[n])] for n in eligible}
    return {"runs": rows, "member_curve": curve, "tolerance_points": tolerance,
            "selection": eligible, "selection_rule": rule,
            "beaten_by_paper": {n: refs for n, refs in beaten.items() if refs}}


def dominates(a: dict, b: dict) -> bool:
    """Whether run ``a`` is no worse than ``b`` on both x1 error and x16 NLL, and better on one."""
    return (a["x1_error"] <= b["x1_error"] and a["x16_nll"] <= b["x16_nll"]
            and (a["x1_error"], a["x16_nll"]) != (b["x1_error"], b["x16_nll"]))


def pareto_front(rows: dict[str, dict]) -> list[str]:
    """The runs no other run beats on both x1 error and x16 NLL (ties kept)."""
    return [n for n, r in rows.items() if not any(dominates(o, r) for o in rows.values())]


def cell(value, digits: int = 2, percent: bool = False) -> str:
    """A table cell: ``value`` with ``digits`` decimals (as % with ``percent``), — if None."""
    if value is None:
        return "—"
    return f"{100 * value:.{digits}f}" if percent else f"{value:.{digits}f}"


def make_table(summary: dict, missing: list[str]) -> str:
    """The screening table (markdown), candidates in selection order after the references."""
    rows, selection = summary["runs"], summary["selection"]
    order = [n for n in REFERENCES if n in rows] + [n for n in selection if n not in REFERENCES]
    order += [n for n in rows if n not in order]
    lines = ["| run | x1 err % | x16 err % | x16 NLL | x16 ECE | avg. gain (pts) | gap closed "
             "err / NLL | DEE | s/epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for name in order:
        r = rows[name]
        if "diverged" in r:
            lines.append(f"| {name} | diverged: {r['diverged']} |||||||| ")
            continue
        gap = r.get("gap_closed")
        lines.append("| " + " | ".join([
            name, cell(r["x1_error"], percent=True), cell(r["x16_error"], percent=True),
            cell(r["x16_nll"], 3), cell(r["x16_ece"], 3),
            cell(r["averaging_gain"], percent=True),
            f"{gap['error']:.2f} / {gap['nll']:.2f}" if gap else "—",
            cell(r.get("deep_ensemble_equivalent")), f"{r['seconds_per_epoch']:.0f}"]) + " |")
    curve = summary["member_curve"]
    notes = ["", f"Validation split: the last {HOLDOUT_PER_CLASS} training files of each class "
             "(5,000 images), never test/. x1: median of 5 draws."]
    if curve:
        errors = ", ".join(f"{100 * e:.2f}%" for e in curve["error"])
        nlls = ", ".join(f"{v:.3f}" for v in curve["nll"])
        one = curve["single"]
        notes.append(f"MAP members averaged (k = 1..4): error {errors}; NLL {nlls}; one member "
                     f"on average {100 * one['error']:.2f}% / {one['nll']:.3f} (gap closed 0).")
    else:
        notes.append("Gap closed and DEE wait for the 4 MAP seeds (map, map-s1..s3).")
    if summary.get("selection_rule") == "pareto":
        notes.append(f"Selection: no candidate's x1 error is within "
                     f"{summary['tolerance_points']:g} point of MAP's, so the candidates on the "
                     "(x1 error, x16 NLL) Pareto front, lowest x16 NLL first: "
                     f"{', '.join(selection) or '—'}.")
    else:
        notes.append(f"Selection (x1 error within {summary['tolerance_points']:g} point of "
                     f"MAP's, lowest x16 NLL first): {', '.join(selection) or '—'}.")
    beaten = summary.get("beaten_by_paper", {})
    if selection and all(n in beaten for n in selection):
        notes.append("No selected candidate improves on the paper: each is beaten on both x1 "
                     "error and x16 NLL by a paper hypernet (" + "; ".join(
                         f"{n}: {', '.join(beaten[n])}" for n in selection) + ").")
    notes.append("s/epoch: median epoch wall time as recorded while other work shared the 2 "
                 "cores; compare step costs in benchmarks/results/speed/, not here.")
    if missing:
        notes.append(f"Not finished yet: {', '.join(missing)}.")
    return "\n".join(["# c10-10k-screen (15 epochs, seed 0, validation split)", "", *lines,
                      *notes]) + "\n"


def plot(summary: dict, path: Path) -> None:
    """x16 NLL against x1 error, one labelled point per run, MAP's x1 error marked."""
    rows = {n: r for n, r in summary["runs"].items() if "x1_error" in r}
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for name, r in rows.items():
        ax.scatter(100 * r["x1_error"], r["x16_nll"], s=18,
                   color="C0" if is_candidate(name) else "k")
        ax.annotate(name.removeprefix("hypernet-"), (100 * r["x1_error"], r["x16_nll"]),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    if "map" in rows:
        ax.axvline(100 * rows["map"]["x1_error"], color="grey", lw=0.6, ls=":")
    curve = summary["member_curve"]
    if curve:
        for k, v in enumerate(curve["nll"], 1):
            ax.axhline(v, color="C3", lw=0.5, ls="--")
            ax.annotate(f"{k} MAP", (ax.get_xlim()[1], v), fontsize=6, color="C3", ha="right")
    ax.set(xlabel="validation error x1 (%)", ylabel="validation NLL x16",
           title="c10-10k-screen: accuracy of one draw against the averaged likelihood")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/c10-10k-screen"))
    p.add_argument("--runs", type=Path, default=Path("runs/c10-10k-screen"))
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="x1 error within this many points of MAP's counts as matched")
    args = p.parse_args(argv)
    results = {n: json.loads((args.results / f"{n}.json").read_text()) for n in RUNS
               if (args.results / f"{n}.json").is_file()}
    curve = member_curve(args.runs, args.results / "map-ensemble.json")
    summary = summarise(results, curve, args.tolerance)
    missing = [n for n in RUNS if n not in results]
    write_json(args.results / "summary.json", summary)
    write_text(args.results / "table.md", make_table(summary, missing))
    if summary["runs"]:
        plot(summary, args.results / "nll_vs_error.png")
    print((args.results / "table.md").read_text())


if __name__ == "__main__":
    main()
