"""Summarise benchmarks/results/core: a markdown table and an error-vs-N plot.

Usage: python benchmarks/core_table.py benchmarks/results/core
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(folder: Path) -> None:
    rows, curves = [], {}
    for method in ("map", "hypernet"):
        ev = json.loads((folder / f"{method}.eval.json").read_text())
        history = json.loads((folder / f"{method}.train.json").read_text())["history"]
        per_epoch = statistics.median(h["seconds"] for h in history)
        s = ev["samples"]
        rows.append(f"| {method} | {len(history)} | {100 * s['1']['error']:.2f} | "
                    f"{100 * s['16']['error']:.2f} | {s['1']['nll']:.3f} | {s['16']['nll']:.3f} | "
                    f"{s['1']['ece']:.3f} | {s['16']['ece']:.3f} | {per_epoch:.1f} |")
        curves[method] = {int(n): m["error"] for n, m in s.items()}
    table = "\n".join([
        "| method | epochs | error x1 % | error x16 % | NLL x1 | NLL x16 | ECE x1 | ECE x16 | "
        "s/epoch |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    (folder / "table.md").write_text(table + "\n")
    print(table)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for method, curve in curves.items():
        ns = sorted(curve)
        ax.plot(ns, [100 * curve[n] for n in ns], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (samples averaged)")
    ax.set_ylabel("test error (%)")
    ax.set_title("wrn-16-2, CIFAR-10 10k subset, 15 epochs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "error_vs_n.png", dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/core"))
