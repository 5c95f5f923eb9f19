"""The paper's experiments on the ``c10-10k`` protocol: every method, one run folder each.

Protocol (the ``c10-10k`` recipe): ``imagefolder:../shared/data/cifar10``, the first 1,000
training files of each class, the full test set, ``wrn-16-2``, 40 epochs, batch 128, the paper's
optimiser and schedule, seed 0. Evaluation: N in {1, 2, 4, 8, 16}, x1 the median of 5 draws, BN
recalibrated per sample over the training subset (``--bn-batches`` to choose fewer batches).

Writes ``RESULTS/NAME[.FORM].json`` per run (the ``evaluate`` JSON plus config, training history
and wall times). Finished runs are skipped and interrupted ones resumed, so the driver can be
killed and restarted at any point; runs go in the order below (most informative first).

Usage: python benchmarks/c10_10k.py [--only NAME ...] [--list] [--runs runs/c10-10k]
           [--results benchmarks/results/c10-10k] [--bn-batches K]
Then: python benchmarks/c10_10k_report.py   (tables and plots from the JSON files)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import run_and_evaluate  # noqa: E402

from pyro_implicit.inference import TrainConfig  # noqa: E402
from pyro_implicit.inference.methods import MC_DROPOUT_RATE  # noqa: E402
from pyro_implicit.inference.recipes import C10_10K  # noqa: E402

SAMPLES = (1, 2, 4, 8, 16)
# widening at N draws builds an N-times wider net from N^2 draws (N^2 times the FLOPs): N <= 4
WIDENING_SAMPLES = (1, 2, 4)


def _hypernet(prior: str = "normal", strategy: str = "all-in-one", seed: int = 0) -> dict:
    return dict(method="hypernet", prior=prior, strategy=strategy, seed=seed)


# name -> (TrainConfig changes to the protocol, {result suffix: extra evaluate_run kwargs})
RUNS: dict[str, tuple[dict, dict[str, dict]]] = {
    "map-s0": (dict(method="map"), {"": {}}),
    "hypernet-normal-s0": (_hypernet(), {"": {}}),
    "hypernet-uniform01-s0": (_hypernet("uniform01"), {"": {}}),
    "mle-s0": (dict(method="mle"), {"": {}}),
    "ensemble-s0": (dict(method="ensemble", members=4, member_method="map"), {"": {}}),
    "hypernet-blockwise-normal-s0": (_hypernet(strategy="block-wise"),
                                     {"": {}, ".parallelizing": {"form": "parallelizing"}}),
    "hypernet-layerwise-normal-s0": (_hypernet(strategy="layer-wise"),
                                     {"": {}, ".widening": {"form": "widening",
                                                            "samples": WIDENING_SAMPLES}}),
    "hypernet-uniform-s0": (_hypernet("uniform"), {"": {}}),
    "hypernet-halfnormal-s0": (_hypernet("halfnormal"), {"": {}}),
    "bbb-s0": (dict(method="bbb", local_reparam=True), {"": {}}),
    "bayes-hypernet-s0": (dict(method="bayes-hypernet"), {"": {}}),
    "mc-dropout-s0": (dict(method="mc-dropout", drop_rate=MC_DROPOUT_RATE), {"": {}}),
    "map-s1": (dict(method="map", seed=1), {"": {}}),
    "map-s2": (dict(method="map", seed=2), {"": {}}),
    "hypernet-normal-s1": (_hypernet(seed=1), {"": {}}),
    "hypernet-normal-s2": (_hypernet(seed=2), {"": {}}),
}


def config_for(name: str, data: str) -> TrainConfig:
    """The protocol's TrainConfig for run ``name`` (one of RUNS) reading ``data``."""
    changes, _ = RUNS[name]
    return TrainConfig(**{**C10_10K, "data": data, "recipe": "c10-10k", **changes})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"run these only: {', '.join(RUNS)}")
    p.add_argument("--list", action="store_true", help="print the run names and exit")
    p.add_argument("--data", default=C10_10K["data"])
    p.add_argument("--runs", type=Path, default=Path("runs/c10-10k"))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/c10-10k"))
    p.add_argument("--bn-batches", type=int, default=None,
                   help="BN recalibration batches per sample (default: the whole subset)")
    args = p.parse_args()
    if args.list:
        print("\n".join(RUNS))
        return
    names = args.only or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        p.error(f"unknown run(s) {unknown}; valid: {', '.join(RUNS)}")
    for name in names:
        _, evaluations = RUNS[name]
        evaluations = {suffix: {"samples": SAMPLES, "bn_batches": args.bn_batches, **kwargs}
                       for suffix, kwargs in evaluations.items()}
        run_and_evaluate(name, config_for(name, args.data), args.runs, args.results, evaluations)


if __name__ == "__main__":
    main()
