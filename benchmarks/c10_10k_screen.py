"""The ``c10-10k-screen`` protocol: cheap screening of hypernetwork configurations.

The c10-10k data and net (``wrn-16-2``, the first 1,000 training files of each class, batch
128, the paper's optimiser and schedule) for 15 epochs, seed 0. Every run is scored on a
validation split carved from training files outside the subset, the last 500 of each class
(5,000 images), never on ``test/``: N in {1, 2, 4, 8, 16}, x1 the median of 5 draws, BN
recalibrated per sample over 50 batches of the subset.

References: MAP and the paper's hypernets (N(0,1) and U(0,1)) at 15 epochs. Candidates: the
options of ``pyro-implicit train --method hypernet`` (see ``docs/method.md``).

Writes ``RESULTS/NAME.json`` per run (the ``evaluate`` JSON on the validation split plus config,
history and wall times); finished runs are skipped and interrupted ones resumed, so the driver
can be killed and restarted at any point.

Usage: python benchmarks/c10_10k_screen.py [--only NAME ...] [--list] [--runs DIR] [--results DIR]
Then:  python benchmarks/c10_10k_screen_report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner import driver_arguments, run_and_evaluate  # noqa: E402

from pyro_implicit.inference import TrainConfig, validate  # noqa: E402
from pyro_implicit.inference.data import imagefolder_holdout  # noqa: E402
from pyro_implicit.inference.evaluate import evaluate  # noqa: E402
from pyro_implicit.inference.recipes import C10_10K, HYPERNET  # noqa: E402
from pyro_implicit.inference.runs import load_run  # noqa: E402

EPOCHS = 15
HOLDOUT_PER_CLASS = 500
SAMPLES = (1, 2, 4, 8, 16)
BN_BATCHES = 50


def _h(prior: str = "normal", **changes) -> dict:
    """The paper's hypernet (every knob pinned) with ``prior`` and ``changes``."""
    return {**HYPERNET, "prior": prior, **changes}


# name -> TrainConfig changes to the screening protocol; references first, then candidates
RUNS: dict[str, dict] = {
    "map": dict(method="map"),
    "hypernet-normal": _h(),
    "hypernet-uniform01": _h("uniform01"),
    # the prior as a knob: N(mu, s^2); BatchNorm makes only s / mu matter
    "hypernet-normal-loc1-scale0.5": _h(z_loc=1.0, z_scale=0.5),
    "hypernet-normal-loc1-scale1": _h(z_loc=1.0, z_scale=1.0),
    # several z per step: 4 groups of 32 images, one draw each (same conv FLOPs)
    "hypernet-normal-draws4": _h(z_draws=4),
    # the generated weights' step: the output layers at 1/16 of lr (lr |r|^2 ~ lr)
    "hypernet-normal-thetalr0.0625": _h(theta_lr_scale=0.0625),
    # a diversity term on the accurate prior: beta cos^2 between two draws' kernels
    # (Wortsman et al. 2021's subspace regulariser, per layer)
    "hypernet-uniform01-repel1": _h("uniform01", repulsion=1.0),
    "hypernet-uniform01-repel4": _h("uniform01", repulsion=4.0),
    # a noise schedule: one network for 2 epochs, p(z) opened over the next 4
    "hypernet-normal-hold2-warmup4": _h(z_hold=2, z_warmup=4),
    "hypernet-uniform01-draws4": _h("uniform01", z_draws=4),
    # K-anchor p(z): z = e_k, one of z_dim = 16 anchors (orthogonal draws, still positive),
    # an ensemble of 16 kernel sets sharing the output layer; 4 draws per step, and one
    "hypernet-onehot-draws4": _h("onehot", z_draws=4),
    # 4 anchors (z_dim 4, h_dim 16), as many as the ensemble's members, each in about a
    # quarter of every step's groups
    "hypernet-onehot4-draws4": _h("onehot", z_draws=4, z_dim=4),
    "hypernet-onehot": _h("onehot"),
    # z on the unit cube's corners: positive like U(0,1), each draw a random half of the
    # first layer's columns (cosine 1/2 between draws' z, U(0,1)'s 3/4); Wortsman et al.'s
    # subspaces are most diverse at their vertices
    "hypernet-bernoulli-draws4": _h("bernoulli", z_draws=4),
    # the strongest baseline trained once on c10-10k (Krueger et al.'s Bayesian hypernet,
    # bounded flow): a reference for the screening's ranking, not a candidate
    "bayes-hypernet": dict(method="bayes-hypernet"),
    "hypernet-bernoulli": _h("bernoulli"),
    # the accurate prior moved toward the diverse symmetric one: U(-c, 1 - c) (c = 1/2 is
    # U(-1,1) at half the scale)
    "hypernet-uniform01-loc-0.1": _h("uniform01", z_loc=-0.1),
    "hypernet-uniform01-loc-0.25": _h("uniform01", z_loc=-0.25),
    # probes beyond the 1.2x step budget on CPU (benchmarks/results/speed/
    # hypernet_options_steps.json: 1.26-1.33x): what more draws, smaller BatchNorm batches
    # and a larger hypernetwork buy.
    # The best with a larger hypernetwork (the paper's z = h = 32 for PyramidNet, SVHN and
    # ResNet-50): kernels from a 32-dim rather than a 16-dim subspace per layer
    "hypernet-uniform01-draws4-h32": _h("uniform01", z_draws=4, z_dim=32, h_dim=32),
    "hypernet-uniform01-draws8": _h("uniform01", z_draws=8),  # 8 groups of 16
    # BatchNorm over 16 images with 4 draws (2 groups each): tells draws8's draws from its
    # smaller BatchNorm batches, as the bn-groups4 controls do for draws4
    "hypernet-uniform01-draws4-bn-groups8": _h("uniform01", z_draws=4, bn_groups=8),
    # the control of the draws' groups: 4 BatchNorm groups of 32 images (ghost BN, Hoffer et
    # al. 2017) under one draw, and for MAP; they tell the smaller BatchNorm batches from the
    # 4 draws
    "map-bn-groups4": dict(method="map", bn_groups=4),
    "hypernet-uniform01-bn-groups4": _h("uniform01", bn_groups=4),
    # a diversity-aware objective: the mixture likelihood of 2 draws (2x the step)
    "hypernet-normal-mixture2": _h(z_draws=2, z_draw_mode="mixture"),
    # rank-1 generation (BatchEnsemble, Wen et al. 2020; rank-1 BNNs, Dusenberry et al. 2020):
    # one shared kernel per layer, learning from every image, times per-channel factors of z;
    # 4 anchors make it a BatchEnsemble of 4 members, a continuous p(z) a rank-1 implicit
    # posterior (the symmetric N(0,1) for diversity, U(0,1) for comparison)
    "hypernet-onehot4-draws4-rank1": _h("onehot", z_draws=4, z_dim=4, generator="rank1"),
    "hypernet-normal-draws4-rank1": _h(z_draws=4, generator="rank1"),
    "hypernet-uniform01-draws4-rank1": _h("uniform01", z_draws=4, generator="rank1"),
    # the one prior shift that helped U(0,1) with one z (U(-0.1, 0.9): x1 37.11% against
    # 37.95%, NLL 1.028 against 1.062), with the best's 4 z per step
    "hypernet-uniform01-loc-0.1-draws4": _h("uniform01", z_loc=-0.1, z_draws=4),
    # the 4-member MAP ensemble of the same protocol (map is member 0): gap-closed reference
    **{f"map-s{m}": dict(method="map", seed=m) for m in (1, 2, 3)},
}
ENSEMBLE = ("map", "map-s1", "map-s2", "map-s3")  # seeds 0-3


def config_for(name: str, data: str) -> TrainConfig:
    """The screening TrainConfig of run ``name`` (one of RUNS) reading ``data``."""
    return TrainConfig(**{**C10_10K, "data": data, "epochs": EPOCHS,
                          "recipe": "c10-10k-screen", **RUNS[name]})


def validation_evaluator(data: str, train_subset: int):
    """``evaluate_run``'s stand-in scoring a run folder on the held-out split of ``data``."""
    held_x, held_y = imagefolder_holdout(data, HOLDOUT_PER_CLASS, train_subset)

    def score(path: Path, progress: bool = False, **kwargs) -> dict:
        run = load_run(path)
        run.data.test_x, run.data.test_y = held_x, held_y  # never test/
        result = evaluate(run, progress=progress, **kwargs)
        result.update(run=str(path), data=f"{data} (last {HOLDOUT_PER_CLASS} training files "
                                          f"of each class)")
        return result

    return score


def main() -> None:
    _, args, names = driver_arguments(__doc__.splitlines()[0], list(RUNS), C10_10K["data"],
                                      "c10-10k-screen")
    if names is None:
        return
    for name in names:
        validate(config_for(name, args.data))  # every bad run refused before any work
    evaluator = validation_evaluator(args.data, C10_10K["train_subset"])
    for name in names:
        run_and_evaluate(name, config_for(name, args.data), args.runs, args.results,
                         {"": {"samples": SAMPLES, "bn_batches": BN_BATCHES}}, evaluator)


if __name__ == "__main__":
    main()
