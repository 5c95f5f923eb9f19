"""Training-step cost of every method against a plain ``map`` step, as ``train`` runs them.

One process, the methods interleaved step by step on the same random batch, warm-up excluded,
median over ``--steps``. An ensemble's step is a ``map`` member's step (its members train one
after another), so it is not listed.

Usage: python benchmarks/method_steps.py [--net wrn-16-2] [--batch 128] [--steps 10]
           [--hypernet-options] [--only NAME ...]
           [--json benchmarks/results/speed/method_steps.json]
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

from pyro_implicit.inference.methods import MC_DROPOUT_RATE  # noqa: E402
from pyro_implicit.inference.recipes import HYPERNET  # noqa: E402

METHODS: dict[str, dict] = {
    "map": dict(method="map"),
    "mle": dict(method="mle"),
    "hypernet": HYPERNET,  # the paper's step (one z), whatever train's defaults
    "bbb": dict(method="bbb"),
    "bbb --local-reparam": dict(method="bbb", local_reparam=True),
    "bayes-hypernet": dict(method="bayes-hypernet"),
    "mc-dropout": dict(method="mc-dropout", drop_rate=MC_DROPOUT_RATE),
}


# the hypernet options of the c10-10k screening whose step costs more or less than one z's
# (theta_lr_scale, z_loc/z_scale and the z schedule cost nothing: the same step)
HYPERNET_OPTIONS: dict[str, dict] = {
    "map": dict(method="map"),
    "hypernet": HYPERNET,
    "hypernet --z-draws 4": {**HYPERNET, "z_draws": 4},
    "hypernet --z-draws 2 --z-draw-mode mixture": {**HYPERNET, "z_draws": 2,
                                                   "z_draw_mode": "mixture"},
    "hypernet --prior uniform01 --repulsion 1": {**HYPERNET, "prior": "uniform01",
                                                 "repulsion": 1.0},
    "hypernet --bn-groups 4": {**HYPERNET, "bn_groups": 4},
    "hypernet --z-draws 8": {**HYPERNET, "z_draws": 8},
    "hypernet --z-draws 4 --bn-groups 8": {**HYPERNET, "z_draws": 4, "bn_groups": 8},
    "hypernet --z-draws 4 --z-dim 32 --h-dim 32": {**HYPERNET, "z_draws": 4, "z_dim": 32,
                                                   "h_dim": 32},
    "hypernet --z-draws 4 --generator rank1": {**HYPERNET, "z_draws": 4, "generator": "rank1"},
    "hypernet --generator rank1": {**HYPERNET, "generator": "rank1"},
}


def time_methods(net: str, batch: int, steps: int, warmup: int = 2,
                 methods: dict[str, dict] = METHODS) -> dict[str, list[float]]:
    """Step seconds of every method of ``methods``, interleaved."""
    variants = {name: Variant(name, net, "cpu", batch, False, changes, num_data=10_000)
                for name, changes in methods.items()}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(warmup + steps):
        for name, variant in variants.items():
            t0 = time.perf_counter()
            variant.step()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--net", default="wrn-16-2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--hypernet-options", action="store_true",
                   help="time map, hypernet and the screening's costlier hypernet options "
                        "instead (default --json .../hypernet_options_steps.json)")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="time map and these of the list only (names as printed)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.steps < 1:
        p.error(f"--steps {args.steps}: must be >= 1")
    methods = HYPERNET_OPTIONS if args.hypernet_options else METHODS
    unknown = sorted(set(args.only or ()) - set(methods))
    if unknown:
        p.error(f"--only {unknown[0]!r}: choose from {', '.join(map(repr, methods))}")
    if args.only:
        methods = {name: c for name, c in methods.items() if name == "map" or name in args.only}
    if args.only and args.json is None:
        p.error("--only needs --json (the full list's files hold every row)")
    args.json = args.json or ("benchmarks/results/speed/" + (
        "hypernet_options_steps.json" if args.hypernet_options else "method_steps.json"))
    times = time_methods(args.net, args.batch, args.steps, methods=methods)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    result = {"device": _cpu_name(), "torch": torch.__version__, "net": args.net,
              "batch": args.batch, "steps": args.steps, "median_s": median,
              "over_map": {name: s / median["map"] for name, s in median.items()},
              "times_s": times}
    for name, s in median.items():
        print(f"{name:44s} {s:.3f} s  {result['over_map'][name]:.2f}x map")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
