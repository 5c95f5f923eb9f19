"""How many training batches BN recalibration needs: x16 error against recalibration batches.

For one trained run (default: the ``c10-10k`` hypernet), the same 16 posterior draws (seed 0)
are evaluated on the full test set with BN statistics recalibrated over K training batches of
128 (augmentation off), for K in 10, 25, 50 and a full epoch; records error / NLL for x1 and x16
and the recalibration seconds per sample.

Usage: python benchmarks/bn_batches.py [RUN] [--json benchmarks/results/bn_batches.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
import torch

from pyro_implicit import freeze_posterior
from pyro_implicit.inference.evaluate import evaluate
from pyro_implicit.inference.runs import load_run

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", nargs="?", default="runs/c10-10k/hypernet-normal-s0")
    p.add_argument("--batches", default="10,25,50,full")
    p.add_argument("--json", default="benchmarks/results/bn_batches/bn_batches.json")
    args = p.parse_args()
    run = load_run(Path(args.run))
    full = -(-len(run.data.train_y) // run.config.batch_size)
    rows = []
    for text in args.batches.split(","):
        k = None if text == "full" else int(text)
        t0 = time.perf_counter()  # the recalibration alone, for the same 16 draws
        freeze_posterior(run.model, run.guide, 16, run.train_inputs, k)
        recal = (time.perf_counter() - t0) / 16
        result = evaluate(run, samples=(1, 16), bn_batches=k, seed=0, progress=False)
        rows.append({"batches": k or full, "full_epoch": k is None, "recal_s_per_sample": recal,
                     "x1": result["samples"]["1"], "x16": result["samples"]["16"],
                     "x1_draws": result["x1_draws"]})
        print(f"K={k or full:>4}: x1 {100 * rows[-1]['x1']['error']:.2f}%  "
              f"x16 {100 * rows[-1]['x16']['error']:.2f}%  recal {recal:.2f}s/sample", flush=True)
    out = {"run": args.run, "model": run.config.model, "train_items": len(run.data.train_y),
           "batch_size": run.config.batch_size, "epoch_batches": full,
           "threads": torch.get_num_threads(), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    _plot(out, Path(args.json).with_suffix(".png"))


def _plot(out: dict, path: Path) -> None:
    rows = out["rows"]
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ks = [r["batches"] for r in rows]
    for n in ("x1", "x16"):
        ax.plot(ks, [100 * r[n]["error"] for r in rows], "o-", label=n)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_xlabel(f"recalibration batches of {out['batch_size']} "
                  f"(full epoch = {out['epoch_batches']})")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"{out['model']}: BN recalibration budget")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
