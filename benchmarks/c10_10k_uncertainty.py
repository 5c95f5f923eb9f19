"""Uncertainty evaluation of the ``c10-10k`` runs: calibrated likelihood, deep-ensemble
equivalent, distribution shift and out-of-distribution detection, one JSON per run.

Every finished run folder of ``benchmarks/c10_10k.py`` named in RUNS is evaluated on the test
set with N in {1, 4, 16} (x1 the median of 5 draws, BN recalibrated per draw over 50 batches):

- the temperature fitted on the validation split (the last 500 training files of each class,
  outside the 10k subset, so held out; never ``test/``);
- the deep-ensemble equivalent against the MAP runs of seeds 0-3 (``map-s0`` .. ``map-s3``),
  whose member curve is computed once and kept as ``RESULTS/dee_members.json``: later
  evaluations (also in a fresh checkout, whose run folders are gone) read it instead of
  needing the four MAP folders;
- the 15 CIFAR-10-C-style corruptions x 5 severities on a seeded 500-image subset of the test
  set (generated once and cached);
- out-of-distribution: scikit-learn's digits as 32x32 RGB.

Run folders that are missing or unfinished are trained (or resumed) first with
``benchmarks/c10_10k.py``'s configuration of that name (the four MAP members of the
deep-ensemble equivalent first while their curve is not kept yet; ``laplace-s0`` after
``map-s0``), so the driver can be killed and
restarted at any point; ``--no-train`` evaluates only what has finished, ``--train-only`` trains
the named runs and evaluates nothing (a run folder another process is writing is left to it),
so that several processes can train different runs at once. Writes
``RESULTS/NAME.json`` (the ``evaluate`` JSON plus the run's config and the evaluation's wall
time); finished JSONs are skipped. A run that diverges is reported and skipped. Run one process
at a time per run folder: the folders are shared (``--train-only`` on distinct names is safe).

Usage: python benchmarks/c10_10k_uncertainty.py [--only NAME ...] [--list]
           [--no-train | --train-only] [--runs runs/c10-10k]
           [--results benchmarks/results/c10-10k-uncertainty]
Then: python benchmarks/c10_10k_uncertainty_report.py
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import c10_10k  # noqa: E402
from runner import driver_arguments, train_or_resume  # noqa: E402

from pyro_implicit.inference.data import imagefolder_holdout  # noqa: E402
from pyro_implicit.inference.evaluate import (  # noqa: E402
    add_dee,
    evaluate,
    member_curve,
    ood_images,
)
from pyro_implicit.inference.outputs import write_json  # noqa: E402
from pyro_implicit.inference.recipes import C10_10K  # noqa: E402
from pyro_implicit.inference.runs import RunLocked, is_finished, load_run  # noqa: E402

RUNS = ("map-s0", "ensemble-s0", "mc-dropout-s0", "bbb-s0", "swag-s0", "laplace-s0",
        "bayes-hypernet-s0", "hypernet-normal-s0", "hypernet-uniform01-s0", "hypernet-best-s0")
DEE_MEMBERS = ("map-s0", "map-s1", "map-s2", "map-s3")
SAMPLES = (1, 4, 16)
BN_BATCHES = 50
HOLDOUT_PER_CLASS = 500
CORRUPTIONS = SEVERITIES = None  # all 15 corruptions, all 5 severities
SHIFT_SUBSET = 500  # x 75 sets x 16 draws: the bulk of a run's evaluation
OOD = "digits"
CURVE = "dee_members.json"  # in the results folder
SEED = 0  # of the evaluation: BN recalibration batches, draws


def ensure_trained(name: str, runs: Path, data: str) -> bool:
    """Train or resume ``runs/name`` with c10_10k.py's configuration of that name (and the run a
    post-hoc method is fitted to) unless it has finished; False if it diverged or is not one
    of that driver's runs."""
    if name not in c10_10k.RUNS:
        print(f"{name}: not a run of benchmarks/c10_10k.py (yet), skipped", flush=True)
        return False
    config = c10_10k.config_for(name, data)
    c10_10k.link_members(name, config, runs)
    config, source = c10_10k.post_hoc_source(config, runs)
    if source is not None and not ensure_trained(source.name, runs, data):
        return False
    if not is_finished(runs / name):
        print(f"{name}: training", flush=True)
    diverged = train_or_resume(config, runs / name)
    if diverged:
        print(f"{name}: diverged ({diverged}), skipped", flush=True)
    return diverged is None


def dee_curve(runs: Path, results: Path, held_out: tuple) -> dict | None:
    """The member curve of DEE_MEMBERS (see :func:`member_curve`) on the test set and
    ``held_out``: read from ``results/dee_members.json``, else computed from their finished run
    folders and written there; None while one of them is unfinished."""
    path = results / CURVE
    if path.is_file():
        return json.loads(path.read_text())
    if not all(is_finished(runs / m) for m in DEE_MEMBERS):
        return None
    members = [load_run(runs / m) for m in DEE_MEMBERS]
    curve = {"runs": list(DEE_MEMBERS), "seeds": [m.config.seed for m in members],
             **member_curve(members, members[0].data, held_out, BN_BATCHES, SEED,
                            progress=False)}
    results.mkdir(parents=True, exist_ok=True)
    write_json(path, curve)
    return curve


def evaluate_uncertainty(name: str, runs: Path, data: str, held_out: tuple,
                         curve: dict) -> dict:
    """The uncertainty evaluation of the finished run ``runs/name`` (see the module docstring),
    with its deep-ensemble equivalents on the member ``curve``."""
    run = load_run(runs / name)
    t0 = time.perf_counter()
    result = evaluate(run, SAMPLES, bn_batches=BN_BATCHES, seed=SEED, progress=False,
                      calibration=held_out, shift="corruptions", corruptions=CORRUPTIONS,
                      severities=SEVERITIES, shift_subset=SHIFT_SUBSET,
                      ood=ood_images(OOD, run))
    add_dee(result, curve)
    result.update(name=name, run=str(runs / name), data=data, ood_data=OOD,
                  calibration=f"validation split (last {HOLDOUT_PER_CLASS} training files of "
                              "each class, held out)",
                  config=dataclasses.asdict(run.config), eval_wall=time.perf_counter() - t0)
    return result


def main() -> None:
    def no_train(p) -> None:
        mode = p.add_mutually_exclusive_group()
        mode.add_argument("--no-train", action="store_true",
                          help="evaluate finished run folders only, train nothing")
        mode.add_argument("--train-only", action="store_true",
                          help="train (or resume) the named runs, evaluate nothing")

    _, args, names = driver_arguments(__doc__.splitlines()[0], list(RUNS), C10_10K["data"],
                                      "c10-10k-uncertainty", no_train, runs_folder="c10-10k")
    if names is None:
        return
    if args.train_only:
        for name in names:
            try:
                ensure_trained(name, args.runs, args.data)
            except RunLocked as err:
                print(f"{name}: left to the process writing it ({err})", flush=True)
        return
    if not args.no_train and not (args.results / CURVE).is_file():
        for name in DEE_MEMBERS:
            ensure_trained(name, args.runs, args.data)
    held_out = imagefolder_holdout(args.data, HOLDOUT_PER_CLASS, C10_10K["train_subset"])
    curve = dee_curve(args.runs, args.results, held_out)
    if curve is None:
        waiting = [m for m in DEE_MEMBERS if not is_finished(args.runs / m)]
        print(f"waiting for the deep-ensemble members {waiting}", flush=True)
        return
    for name in names:
        out = args.results / f"{name}.json"
        if out.is_file():
            continue
        if args.no_train and not is_finished(args.runs / name):
            print(f"{name}: not trained yet, skipped", flush=True)
            continue
        if not args.no_train and not ensure_trained(name, args.runs, args.data):
            continue
        result = evaluate_uncertainty(name, args.runs, args.data, held_out, curve)
        args.results.mkdir(parents=True, exist_ok=True)
        write_json(out, result)
        x16 = result["samples"]["16"]
        print(f"{name}: x16 error {100 * x16['error']:.2f}%, calibrated NLL "
              f"{x16['calibrated']['nll']:.3f}, DEE {x16['dee']:.2f}, shift mean error "
              f"{100 * result['shift']['mean']['16']['error']:.2f}%, OOD AUROC (entropy) "
              f"{result['ood']['16']['auroc']['entropy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
