"""Kernel generation and its backward on the output layers theta, with theta's matrix-vector
products cut into row ranges on a thread pool (the library's CPU default) against one product
per layer on the calling thread; the two interleaved, warm-up excluded, medians.

Usage: python benchmarks/generation_threads.py [--net wrn-28-10] [--repeats 10]
           [--json benchmarks/results/speed/generation_threads.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import Variant, _cpu_name, write_json  # noqa: E402

import pyro_implicit.generation as generation  # noqa: E402
from pyro_implicit.hypernet import release_grads  # noqa: E402

MODES = {"threads": generation._threads_for, "one": lambda output: 1}


def time_modes(net: str, repeats: int, warmup: int = 2) -> dict[str, dict[str, list[float]]]:
    """Seconds of the forward (kernels from z) and of the backward (theta's gradient and the
    hidden layers') for each mode of MODES, interleaved."""
    hyper = Variant("hypernet", net, "cpu", 1, False).guide.hypernet
    times = {mode: {"forward": [], "backward": []} for mode in MODES}
    for i in range(warmup + repeats):
        for mode, threads_for in MODES.items():
            generation._threads_for = threads_for
            z = torch.randn(len(hyper.shapes), hyper.z_dim)
            t0 = time.perf_counter()
            kernels = hyper(z)
            t1 = time.perf_counter()
            release_grads(hyper)
            sum(k.sum() for k in kernels).backward()
            t2 = time.perf_counter()
            if i >= warmup:
                times[mode]["forward"].append(t1 - t0)
                times[mode]["backward"].append(t2 - t1)
    generation._threads_for = MODES["threads"]
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", default="wrn-28-10")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", default="benchmarks/results/speed/generation_threads.json")
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: must be >= 1")
    times = time_modes(args.net, args.repeats)
    median = {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()}
    result = {"device": _cpu_name(), "torch": torch.__version__, "net": args.net,
              "repeats": args.repeats, "median_s": median,
              "threads_over_one": {k: median["threads"][k] / median["one"][k]
                                   for k in ("forward", "backward")}, "times_s": times}
    for mode, m in median.items():
        print(f"{mode:8s} forward {m['forward']:.4f} s  backward {m['backward']:.4f} s")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
