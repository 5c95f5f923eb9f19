"""The paper's experiments on the ``c10-10k`` protocol: every method, one run folder each.

Protocol (the ``c10-10k`` recipe): ``imagefolder:../shared/data/cifar10``, the first 1,000
training files of each class, the full test set, ``wrn-16-2``, 40 epochs, batch 128, the paper's
optimiser and schedule, seed 0. Evaluation: N in {1, 2, 4, 8, 16}, x1 the median of 5 draws, BN
recalibrated per sample over the training subset (``--bn-batches`` to choose fewer batches).

Writes ``RESULTS/NAME[.FORM].json`` per run (the ``evaluate`` JSON plus config, training history
and wall times). Finished runs are skipped and interrupted ones resumed, so the driver can be
killed and restarted at any point; runs go in the order below (most informative first).

The ensemble's members are the ``map`` runs of seeds 0-3: member m of the seed-0 ensemble trains
with seed m, which is exactly ``map-s<m>``'s configuration (checked), so ``RUNS/ensemble-s0/
members/<m>`` is a link to ``RUNS/map-s<m>`` and each of those nets is trained once.

Usage: python benchmarks/c10_10k.py [--only NAME ...] [--list] [--runs runs/c10-10k]
           [--results benchmarks/results/c10-10k] [--bn-batches K]
Then: python benchmarks/c10_10k_report.py   (tables and plots from the JSON files)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import driver_arguments, run_and_evaluate  # noqa: E402

from pyro_implicit.inference import TrainConfig  # noqa: E402
from pyro_implicit.inference.ensemble import MEMBERS, member_config  # noqa: E402
from pyro_implicit.inference.methods import MC_DROPOUT_RATE, METHODS  # noqa: E402
from pyro_implicit.inference.recipes import BEST_HYPERNET, C10_10K, HYPERNET  # noqa: E402
from pyro_implicit.inference.runs import CONFIG, is_finished  # noqa: E402

SAMPLES = (1, 2, 4, 8, 16)
# widening at N draws builds an N-times wider net from N^2 draws (N^2 times the FLOPs): N <= 4
WIDENING_SAMPLES = (1, 2, 4)


def _hypernet(prior: str = "normal", strategy: str = "all-in-one", seed: int = 0) -> dict:
    """The paper's hypernet (every knob pinned) with ``prior``, ``strategy`` and ``seed``."""
    return {**HYPERNET, "prior": prior, "strategy": strategy, "seed": seed}


# the rank-1 candidates' p(z): run name part -> hypernet changes
RANK1_PRIORS = {"onehot4": {"prior": "onehot", "z_dim": 4}, "uniform01": {"prior": "uniform01"},
                "normal": {}}

# name -> (TrainConfig changes to the protocol, {result suffix: extra evaluate_run kwargs})
RUNS: dict[str, tuple[dict, dict[str, dict]]] = {
    "map-s0": (dict(method="map"), {"": {}}),
    "hypernet-normal-s0": (_hypernet(), {"": {}}),
    "hypernet-uniform01-s0": (_hypernet("uniform01"), {"": {}}),
    "mle-s0": (dict(method="mle"), {"": {}}),
    "ensemble-s0": (dict(method="ensemble", members=4, member_method="map"), {"": {}}),
    "map-s1": (dict(method="map", seed=1), {"": {}}),  # trained as ensemble members
    "map-s2": (dict(method="map", seed=2), {"": {}}),
    "map-s3": (dict(method="map", seed=3), {"": {}}),
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
    "swag-s0": (dict(method="swag"), {"": {}}),
    # post hoc on map-s0 (RUNS/map-s0 must be finished): no training of its own
    "laplace-s0": (dict(method="laplace"), {"": {}}),
    "hypernet-normal-s1": (_hypernet(seed=1), {"": {}}),
    "hypernet-normal-s2": (_hypernet(seed=2), {"": {}}),
    # the runner-up of the c10-10k-screen (the paper's U(0,1)): its 3 seeds too
    "hypernet-uniform01-s1": (_hypernet("uniform01", seed=1), {"": {}}),
    "hypernet-uniform01-s2": (_hypernet("uniform01", seed=2), {"": {}}),
    # the best configuration of the c10-10k-screen (recipe c10-10k-best, train's default)
    **{f"hypernet-best-s{m}": ({**BEST_HYPERNET, "seed": m}, {"": {}}) for m in range(3)},
    # rank-1 generation (--generator rank1, 4 z per step), the screening's three: 4 anchors (a
    # BatchEnsemble of 4 whose factors come from one small MLP, NLL 0.973), U(0,1) (its best
    # of all: x1 32.78%, NLL 0.915) and the symmetric N(0,1) (twice the averaging gain)
    **{f"hypernet-rank1-{prior}-s{m}": ({**HYPERNET, "z_draws": 4, "generator": "rank1",
                                         **changes, "seed": m}, {"": {}})
       for prior, changes in RANK1_PRIORS.items() for m in range(3)},
    # does training longer let the N(0,1) noise be fitted? (the paper trains 800 epochs)
    "map-e120-s0": (dict(method="map", epochs=120), {"": {}}),
    "hypernet-normal-e120-s0": (dict(_hypernet(), epochs=120), {"": {}}),
    "hypernet-uniform01-e120-s0": (dict(_hypernet("uniform01"), epochs=120), {"": {}}),
}


def config_for(name: str, data: str) -> TrainConfig:
    """The protocol's TrainConfig for run ``name`` (one of RUNS) reading ``data``."""
    changes, _ = RUNS[name]
    return TrainConfig(**{**C10_10K, "data": data, "recipe": "c10-10k", **changes})


def post_hoc_source(config: TrainConfig, runs: Path) -> tuple[TrainConfig, Path | None]:
    """``config`` fitted post hoc (laplace) to ``runs/map-s<seed>`` and that run folder, else
    ``config`` and None."""
    post_hoc = METHODS[config.method].post_hoc
    if post_hoc is None:
        return config, None
    source = runs / f"{post_hoc.source}-s{config.seed}"
    return dataclasses.replace(config, from_run=str(source)), source


def link_members(name: str, config: TrainConfig, runs: Path) -> None:
    """Make ``runs/name/members/<m>`` a link to ``runs/<member method>-s<m>`` when ``config`` is
    an ensemble whose member m has exactly that run's configuration (so each net trains once).
    Every member is checked before any link is made."""
    if config.method != "ensemble":
        return
    targets = [runs / f"{config.member_method}-s{m}" for m in range(config.members)]
    for m, target in enumerate(targets):
        member = member_config(config, m)
        expected = {"RUNS": config_for(target.name, config.data) if target.name in RUNS else None,
                    "its saved config": (TrainConfig.load(target / CONFIG)
                                         if (target / CONFIG).is_file() else None)}
        for what, other in expected.items():
            if other is not None and other != member:
                diff = {k: (v, getattr(other, k)) for k, v in vars(member).items()
                        if v != getattr(other, k)}
                raise ValueError(f"{name} member {m} is not {target} ({what}); differing "
                                 f"(member, run): {diff}")
    for m, target in enumerate(targets):
        link = runs / name / MEMBERS / str(m)
        if link.is_symlink() or link.exists():
            continue
        target.mkdir(parents=True, exist_ok=True)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(target, link.parent), target_is_directory=True)


def main() -> None:
    def bn_batches(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bn-batches", type=int, default=None,
                       help="BN recalibration batches per sample (default: the whole subset)")

    p, args, names = driver_arguments(__doc__.splitlines()[0], list(RUNS), C10_10K["data"],
                                      "c10-10k", bn_batches)
    if names is None:
        return
    for name in names:
        _, evaluations = RUNS[name]
        evaluations = {suffix: {"samples": SAMPLES, "bn_batches": args.bn_batches, **kwargs}
                       for suffix, kwargs in evaluations.items()}
        config = config_for(name, args.data)
        try:
            link_members(name, config, args.runs)
        except ValueError as err:  # a run folder left by another configuration: one line
            p.error(str(err))
        config, source = post_hoc_source(config, args.runs)
        if source is not None and not is_finished(source) \
                and not (args.results / f"{name}.json").is_file():
            print(f"{name}: skipped until {source} has finished (it is fitted to that run)",
                  flush=True)
            continue
        run_and_evaluate(name, config, args.runs, args.results, evaluations)


if __name__ == "__main__":
    main()
