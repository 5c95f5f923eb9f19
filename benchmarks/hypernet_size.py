"""Hypernetwork size sweep (the paper's Fig. 8 analogue): test error against h = z.

wrn-16-2, hypernet all-in-one with p(z) = N(0, 1), h_dim = z_dim in {4, 8, 16, 32, 64}, plus the
MAP net for reference; the shared CIFAR-10 tree, a class-balanced 5,000-image training subset,
10 epochs (the paper's schedule compressed), seed 0; evaluated on the full test set with
N in {1, 4, 16} and BN recalibrated over 20 training batches per sample. Resumable.

Usage: python benchmarks/hypernet_size.py [--data imagefolder:../shared/data/cifar10]
           [--runs runs/hypernet_size] [--out benchmarks/results/hypernet_size]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import run_and_evaluate  # noqa: E402

from pyro_implicit.inference import TrainConfig  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SIZES = (4, 8, 16, 32, 64)
EVAL = {"samples": (1, 4, 16), "bn_batches": 20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="imagefolder:../shared/data/cifar10")
    p.add_argument("--runs", type=Path, default=Path("runs/hypernet_size"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/hypernet_size"))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-subset", type=int, default=5000)
    args = p.parse_args()
    base = dict(model="wrn-16-2", data=args.data, train_subset=args.train_subset,
                epochs=args.epochs, seed=0)
    results = {"map": run_and_evaluate("map", TrainConfig(method="map", **base), args.runs,
                                       args.out, {"": EVAL})[""]}
    for size in SIZES:
        config = TrainConfig(method="hypernet", z_dim=size, h_dim=size, **base)
        results[f"h{size}"] = run_and_evaluate(f"hypernet-h{size}", config, args.runs, args.out,
                                               {"": EVAL})[""]
    summary = {name: {"z_dim": r["config"]["z_dim"], "h_dim": r["config"]["h_dim"],
                      "theta": _theta_size(r["config"]),
                      "error": {n: m["error"] for n, m in r["samples"].items()},
                      "nll": {n: m["nll"] for n, m in r["samples"].items()},
                      "s_per_epoch": r["train_seconds"] / len(r["history"])}
               for name, r in results.items()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _plot(summary, args.out / "error_vs_size.png", args.epochs, args.train_subset)
    print(_table(summary))
    (args.out / "table.md").write_text(_table(summary) + "\n")


def _theta_size(config: dict) -> int:
    """Trainable parameters of the run's model + guide (theta and non-generated weights)."""
    from pyro_implicit.inference.methods import build

    model, guide = build(TrainConfig(**config), 10, 3, 1)
    params = {id(p): p for m in (model, guide) for p in m.parameters()}
    return sum(p.numel() for p in params.values())


def _table(summary: dict) -> str:
    lines = ["| run | z = h | trainable params | error x1 % | error x4 % | error x16 % | "
             "NLL x16 | s/epoch |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        e = s["error"]
        size = "-" if name == "map" else s["h_dim"]
        lines.append(f"| {name} | {size} | {s['theta'] / 1e6:.2f}M | {100 * e['1']:.2f} | "
                     f"{100 * e['4']:.2f} | {100 * e['16']:.2f} | {s['nll']['16']:.3f} | "
                     f"{s['s_per_epoch']:.1f} |")
    return "\n".join(lines)


def _plot(summary: dict, path: Path, epochs: int, subset: int) -> None:
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sizes = [s["h_dim"] for n, s in summary.items() if n != "map"]
    for n, style in (("1", "o-"), ("16", "s-")):
        ax.plot(sizes, [100 * s["error"][n] for k, s in summary.items() if k != "map"], style,
                label=f"hypernet x{n}")
    ax.axhline(100 * summary["map"]["error"]["1"], color="gray", ls="--", label="MAP")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hypernetwork size h = z")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"wrn-16-2, {subset} training images, {epochs} epochs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
