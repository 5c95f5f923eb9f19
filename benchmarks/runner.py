"""Resumable experiment runs for the benchmark drivers: train (or resume) a run folder, evaluate
it, and write one JSON per run holding the ``evaluate`` output, the config and the wall times.

A run whose JSON exists is skipped; a run folder that stopped mid-way is resumed, so a driver
can be killed and restarted at any point. A run whose training diverges (a non-finite loss) is a
result too: its JSON records the divergence and the epochs before it, and the driver goes on
(delete the JSON to try it again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pyro_implicit.inference import TrainConfig
from pyro_implicit.inference.evaluate import evaluate_run
from pyro_implicit.inference.runs import CONFIG, METRICS
from pyro_implicit.inference.train import fit


def finished_epochs(run: Path) -> int:
    """Epochs completed by the run folder ``run`` (0 when it has none)."""
    metrics = run / METRICS
    if not metrics.is_file():
        return 0
    return len(json.loads(metrics.read_text())["history"])


def train_or_resume(config: TrainConfig, run: Path) -> str | None:
    """Train ``config`` into the run folder ``run``, or resume it there, unless it has trained
    all its epochs; the divergence message if its loss turns non-finite (its last good
    checkpoint stays in the folder), else None."""
    if finished_epochs(run) >= config.epochs:
        return None
    resume = (run / CONFIG).is_file()
    try:
        fit(None if resume else config, run, resume=resume, progress=False)
    except FloatingPointError as err:
        return str(err)
    return None


def run_and_evaluate(name: str, config: TrainConfig, runs: Path, results: Path,
                     evaluations: dict[str, dict] | None = None,
                     evaluator: Callable[..., dict] = evaluate_run) -> dict[str, dict]:
    """Train ``config`` into ``runs/name`` and write ``results/name[.suffix].json`` for each
    entry ``suffix -> evaluator kwargs`` of ``evaluations`` (default: one plain entry);
    ``evaluator(run folder, **kwargs)`` is :func:`evaluate_run` unless given."""
    evaluations = evaluations or {"": {}}
    out = {}
    run = runs / name
    pending = {s: kw for s, kw in evaluations.items()
               if not (results / f"{name}{s}.json").is_file()}
    for suffix in set(evaluations) - set(pending):
        out[suffix] = json.loads((results / f"{name}{suffix}.json").read_text())
    if not pending:
        return out
    t0 = time.perf_counter()
    diverged = train_or_resume(config, run)
    train_wall = time.perf_counter() - t0
    history = json.loads((run / METRICS).read_text())["history"] if (run / METRICS).is_file() \
        else []
    for suffix, kwargs in pending.items():
        t1 = time.perf_counter()
        result = ({"diverged": diverged, "samples": {}} if diverged
                  else evaluate_run(run, progress=False, **kwargs))
        result.update(name=name, config=dataclasses.asdict(config), history=history,
                      train_seconds=sum(h["seconds"] for h in history),
                      train_wall_this_session=train_wall,
                      eval_wall=time.perf_counter() - t1)
        results.mkdir(parents=True, exist_ok=True)
        tmp = results / f".{name}{suffix}.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(results / f"{name}{suffix}.json")
        out[suffix] = result
        print(f"{name}{suffix}: " + (f"diverged: {diverged}" if diverged else ", ".join(
            f"x{n} {100 * m['error']:.2f}%" for n, m in result["samples"].items())), flush=True)
    return out


def driver_arguments(description: str, runs: Sequence[str], data: str, folder: str,
                     extra: Callable[[argparse.ArgumentParser], None] | None = None,
                     runs_folder: str | None = None
                     ) -> tuple[argparse.ArgumentParser, argparse.Namespace, list[str] | None]:
    """A driver's command line: ``--only NAME ...``, ``--list``, ``--data``, ``--runs``
    (default ``runs/RUNS_FOLDER``, by default FOLDER), ``--results``
    (``benchmarks/results/FOLDER``) and ``extra`` flags; the run names to do, or None after
    ``--list`` printed them. An unknown name is one argparse error line."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--only", nargs="+", metavar="NAME", help=f"run these only: {', '.join(runs)}")
    p.add_argument("--list", action="store_true", help="print the run names and exit")
    p.add_argument("--data", default=data)
    p.add_argument("--runs", type=Path, default=Path("runs") / (runs_folder or folder))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results") / folder)
    if extra is not None:
        extra(p)
    args = p.parse_args()
    if args.list:
        print("\n".join(runs))
        return p, args, None
    names = args.only or list(runs)
    unknown = [n for n in names if n not in runs]
    if unknown:
        p.error(f"unknown run(s) {unknown}; valid: {', '.join(runs)}")
    return p, args, names
