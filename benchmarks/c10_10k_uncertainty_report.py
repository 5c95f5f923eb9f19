"""Tables and plots of the c10-10k uncertainty evaluation (``benchmarks/c10_10k_uncertainty.py``)
from whatever has been evaluated so far: one table per kind, at each run's largest N.

- in-domain: error, NLL and ECE raw and after temperature scaling on the held-out validation
  split, the temperature, the deep-ensemble equivalent, aleatoric / epistemic nats and AURC;
- shift: error, NLL and ECE averaged over the 15 corruptions at each severity;
- OOD (digits): AUROC and AUPR by max probability, predictive entropy, mutual information.

Writes ``RESULTS/table.md``, ``RESULTS/summary.json`` and ``RESULTS/shift_vs_severity.png``.

Usage: python benchmarks/c10_10k_uncertainty_report.py [--results DIR]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c10_10k_report import largest_n  # noqa: E402
from c10_10k_screen_report import cell  # noqa: E402
from c10_10k_uncertainty import RUNS  # noqa: E402

from pyro_implicit.inference.outputs import write_json, write_text  # noqa: E402
from pyro_implicit.inference.shift import SEVERITIES  # noqa: E402
from pyro_implicit.uncertainty import SCORES  # noqa: E402

SHIFT_METRICS = ("error", "nll", "ece")


def shift_by_severity(result: dict, n: str) -> dict[str, dict[str, float]]:
    """Per severity: each metric at ``n`` averaged over the corruptions evaluated."""
    sets = {k: v for k, v in result["shift"].items() if k != "mean"}
    return {str(s): {m: statistics.fmean(by_s[str(s)][n][m] for by_s in sets.values())
                     for m in SHIFT_METRICS}
            for s in SEVERITIES if all(str(s) in by_s for by_s in sets.values())}


def summarise(results: dict[str, dict]) -> dict:
    """Per run, at its largest N: the in-domain, shift and OOD numbers of the tables."""
    rows = {}
    for name, r in results.items():
        n = largest_n(r)
        m = r["samples"][n]
        rows[name] = {
            "n": int(n), "method": r["method"],
            "in_domain": {"error": m["error"], "nll": m["nll"], "ece": m["ece"],
                          "calibrated_nll": m["calibrated"]["nll"],
                          "calibrated_ece": m["calibrated"]["ece"],
                          "temperature": m["calibrated"]["temperature"], "dee": m.get("dee"),
                          "aleatoric": m["aleatoric"], "epistemic": m["epistemic"],
                          "aurc": m["selective"]},
            "probit": r.get("probit"),
            "shift": shift_by_severity(r, n), "shift_mean": r["shift"]["mean"][n],
            "ood": r["ood"][n],
        }
    return rows


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _shift_cell(metrics: dict) -> str:
    """error % / NLL / ECE of one shifted average."""
    return " / ".join([cell(metrics["error"], percent=True), cell(metrics["nll"], 2),
                       cell(metrics["ece"], 3)])


def make_table(rows: dict[str, dict], missing: Sequence[str]) -> str:
    lines = ["# c10-10k uncertainty (test set; temperature fitted on the held-out validation "
             "split)", "",
             "Command: `python benchmarks/c10_10k_uncertainty.py && python "
             "benchmarks/c10_10k_uncertainty_report.py` (after `benchmarks/c10_10k.py`). "
             "Each run at its largest N.", "", "## In-domain", "",
             "| run | N | error % | NLL | ECE | cal. NLL | cal. ECE | T | DEE | aleatoric | "
             "epistemic | AURC max-prob | AURC MI |", "|" + "---|" * 13]
    for name, r in rows.items():
        d = r["in_domain"]
        lines.append(_row([name, str(r["n"]), cell(d["error"], percent=True), cell(d["nll"], 3),
                           cell(d["ece"], 3), cell(d["calibrated_nll"], 3),
                           cell(d["calibrated_ece"], 3), cell(d["temperature"], 2),
                           cell(d["dee"], 2), cell(d["aleatoric"], 3), cell(d["epistemic"], 3),
                           cell(d["aurc"]["max_prob"], 4),
                           cell(d["aurc"]["mutual_information"], 4)]))
        if r["probit"]:
            p, c = r["probit"], r["probit"]["calibrated"]
            lines.append(_row([f"{name} (probit)", "—", cell(p["error"], percent=True),
                               cell(p["nll"], 3), cell(p["ece"], 3), cell(c["nll"], 3),
                               cell(c["ece"], 3), cell(c["temperature"], 2), *["—"] * 5]))
    lines += ["", "## Shift: the 15 corruptions' mean per severity (error % / NLL / ECE)", "",
              "| run | " + " | ".join(f"severity {s}" for s in SEVERITIES) + " | mean |",
              "|" + "---|" * (len(SEVERITIES) + 2)]
    for name, r in rows.items():
        cells = [_shift_cell(v) for v in (r["shift"].get(str(s)) for s in SEVERITIES) if v]
        lines.append(_row([name, *(cells or ["—"]), _shift_cell(r["shift_mean"])]))
    lines += ["", "## Out of distribution (digits): AUROC / AUPR", "",
              "| run | " + " | ".join(SCORES) + " |", "|" + "---|" * (len(SCORES) + 1)]
    for name, r in rows.items():
        ood = r["ood"]
        lines.append(_row([name, *(f"{cell(ood['auroc'][s], 3)} / {cell(ood['aupr'][s], 3)}"
                                   for s in SCORES)]))
    if missing:
        lines += ["", f"Not evaluated yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def plot(rows: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for name, r in rows.items():
        severities = [int(s) for s in r["shift"]]
        for ax, metric in zip(axes, SHIFT_METRICS, strict=True):
            values = [r["shift"][str(s)][metric] * (100 if metric == "error" else 1)
                      for s in severities]
            ax.plot(severities, values, marker="o", label=f"{name} (x{r['n']})")
    for ax, label in zip(axes, ("error %", "NLL", "ECE"), strict=True):
        ax.set_xlabel("corruption severity")
        ax.set_ylabel(label)
        ax.set_xticks(list(SEVERITIES))
    axes[0].legend(fontsize="x-small")
    fig.suptitle("c10-10k under CIFAR-10-C-style corruptions (mean of 15)")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path,
                   default=Path("benchmarks/results/c10-10k-uncertainty"))
    args = p.parse_args(argv)
    results = {name: json.loads((args.results / f"{name}.json").read_text())
               for name in RUNS if (args.results / f"{name}.json").is_file()}
    if not results:
        print(f"nothing evaluated yet in {args.results}")
        return
    rows = summarise(results)
    missing = [name for name in RUNS if name not in results]
    write_text(args.results / "table.md", make_table(rows, missing))
    write_json(args.results / "summary.json", rows)
    plot(rows, args.results / "shift_vs_severity.png")
    print(f"wrote {args.results / 'table.md'} ({len(rows)} runs)")


if __name__ == "__main__":
    main()
