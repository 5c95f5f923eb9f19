"""Summarise benchmarks/results/methods: one markdown row per method (missing runs are skipped).

Usage: python benchmarks/methods_table.py benchmarks/results/methods
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METHODS = ("map", "mle", "ensemble", "hypernet", "bbb", "bayes-hypernet", "mc-dropout")
HEADER = ("| method | epochs | error x1 % | error x16 % | NLL x1 | NLL x16 | ECE x1 | ECE x16 | "
          "train error % | s/epoch |")


def row(folder: Path, method: str) -> str | None:
    """The table row of ``method``, or None when its run or evaluation is missing."""
    evaluation, train = folder / f"{method}.eval.json", folder / f"{method}.train.json"
    if not (evaluation.is_file() and train.is_file()):
        return None
    s = json.loads(evaluation.read_text())["samples"]
    history = json.loads(train.read_text())["history"]
    per_epoch = statistics.median(h["seconds"] for h in history)
    return (f"| {method} | {len(history)} | {100 * s['1']['error']:.2f} | "
            f"{100 * s['16']['error']:.2f} | {s['1']['nll']:.3f} | {s['16']['nll']:.3f} | "
            f"{s['1']['ece']:.3f} | {s['16']['ece']:.3f} | "
            f"{100 * history[-1]['train_error']:.1f} | {per_epoch:.0f} |")


def main(folder: Path) -> None:
    rows = [r for r in (row(folder, m) for m in METHODS) if r is not None]
    table = "\n".join([HEADER, "|" + "---|" * (HEADER.count("|") - 1), *rows])
    (folder / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/methods"))
