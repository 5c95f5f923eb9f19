"""Evaluation of a run: N-sample Bayesian model averages with per-sample BN recalibration.

For N in ``samples`` the first N of max(N) posterior draws are averaged (form ``branching``),
or each N gets its own network assembled in the form ``parallelizing`` or ``widening`` from
fresh draws, with BN recalibrated for it; ``"1"`` reports the median of each metric over 5
single draws (as the paper; every form is the single network at N = 1), whose errors are
``x1_draws``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_implicit import classification_metrics, eval_mode, freeze_posterior, recalibrate_bn
from pyro_implicit.forms import assemble, check_form, draws_needed
from pyro_implicit.model import batchnorm_layers
from pyro_implicit.posterior import sample_logits

from .data import load_data
from .distributed import SINGLE, Dist, setup
from .folders import is_lazy, uint8_batches
from .images import ImageData
from .runs import Run, load_run, read_config

X1_DRAWS = 5
# BN recalibration batches per sample unless told (None: one full pass, the paper's choice):
# on the c10-10k run, x1 and x16 error within 0.1 points of a full pass at 64% of its cost
# (an eighth on the 50k CIFAR training set); see README "Performance"
BN_BATCHES = 50


# Each draw costs a BN recalibration and a pass over the test set (about 10 s for wrn-16-2 on
# the 10k CIFAR subset here, so 1024 draws take hours), and an average of N draws moves by
# O(1/N): beyond a thousand nothing measurable changes.
MAX_SAMPLES = 1024


def check_samples(samples: Sequence[int]) -> list[int]:
    """``samples`` sorted, if every N is an integer in 1..MAX_SAMPLES; else a clear error."""
    values = sorted(set(samples))
    if not values or any(not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES for n in values):
        raise ValueError(f"samples {list(samples)} must be integers in 1..{MAX_SAMPLES} (each "
                         f"draw costs a BN recalibration and a test pass)")
    return values


def parse_samples(text: str) -> list[int]:
    """``"1,2,4,8,16"`` -> [1, 2, 4, 8, 16]; a clear error for anything else."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or values[0] < 1:
        raise ValueError(f"--samples {text!r} must be a comma-separated list of positive "
                         "integers, e.g. 1,2,4,8,16")
    if values[-1] > MAX_SAMPLES:
        raise ValueError(f"--samples {text!r}: at most {MAX_SAMPLES} draws (each costs a BN "
                         "recalibration and a test pass; more change nothing measurable)")
    return values


def _test_inputs(run: Run, test_x, batch_size: int, dist: Dist):
    """A function giving this rank's normalised test batches as (start, x): in-memory images are
    normalised once and kept; lazy ones (ImageNet's validation set) are decoded on each call."""
    starts = range(dist.rank * batch_size, len(test_x), dist.world * batch_size)
    pin = torch.device(run.config.device).type == "cuda"

    def stream():
        batches = uint8_batches(test_x, starts, batch_size, run.config.workers, pin)
        return zip(starts, map(run.normalizer, batches), strict=True)

    if is_lazy(test_x):
        return stream
    kept = list(stream())
    return lambda: kept


@torch.no_grad()
def sample_probs(run: Run, test_x: torch.Tensor, num_draws: int, bn_batches: int | None = None,
                 batch_size: int = 128, progress: bool | None = None,
                 dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities of ``num_draws`` posterior samples on ``test_x``: (draws, n, C).

    Sample by sample (its kernels generated once), batch by batch. A point estimate (no
    latent) is recalibrated and evaluated once and repeated. Under torchrun the recalibration
    passes and the test batches are shared among the ranks.
    """
    unique = 1 if run.guide.is_point else num_draws  # nothing latent: one evaluation
    run.own_param_store()
    posterior = freeze_posterior(run.model, run.guide, unique, run.train_inputs, bn_batches,
                                 progress=progress, distributed=dist.active)
    probs = torch.zeros(unique, len(test_x), run.data.num_classes, dtype=torch.float64)
    inputs = _test_inputs(run, test_x, batch_size, dist)
    with eval_mode(run.model):
        for i in tqdm(range(unique), desc="evaluate", leave=False,
                      disable=not dist.is_main or (None if progress is None else not progress)):
            for start, x in inputs():
                logits = sample_logits(run.model, posterior, i, x)
                probs[i, start:start + len(x)] = logits.softmax(-1).cpu()
    if dist.active:
        torch.distributed.all_reduce(probs)
    return probs.float().expand(num_draws, -1, -1)


@torch.no_grad()
def form_probs(run: Run, test_x: torch.Tensor, n: int, form: str, bn_batches: int | None = None,
               batch_size: int = 128, dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities (n_test, C) of the network averaging ``n`` fresh posterior draws in
    ``form`` (parallelizing or widening), its BN statistics recalibrated for the assembly."""
    latents = [run.guide.sample_latent() for _ in range(draws_needed(form, n))]
    net = assemble(run.model, lambda m: run.guide.weights(latents[m]), n, form)
    if batchnorm_layers(net):
        recalibrate_bn(net, run.train_inputs(), num_batches=bn_batches, distributed=dist.active)
    net.eval()
    probs = torch.zeros(len(test_x), run.data.num_classes, dtype=torch.float64)
    for start, x in _test_inputs(run, test_x, batch_size, dist)():
        probs[start:start + len(x)] = net(x).softmax(-1).cpu()
    if dist.active:
        torch.distributed.all_reduce(probs)
    return probs.float()


def evaluate(run: Run, samples: Sequence[int] = (1, 2, 4, 8, 16), test: ImageData | None = None,
             bn_batches: int | None = BN_BATCHES, seed: int = 0, progress: bool | None = None,
             dist: Dist = SINGLE, form: str = "branching") -> dict:
    """Metrics of N-sample averages in ``form`` on the test split of ``test`` (default: the
    run's data)."""
    check_form(form)
    samples = check_samples(samples)
    test = test or run.data
    if test.classes != run.data.classes:
        raise ValueError(f"evaluation data has classes {test.classes}, the run was trained on "
                         f"{run.data.classes}")
    if not is_lazy(test.test_x) and test.test_x.shape[1:] != run.data.train_x.shape[1:]:
        raise ValueError(f"evaluation images are {tuple(test.test_x.shape[1:])} (C, H, W), the "
                         f"run was trained on {tuple(run.data.train_x.shape[1:])}")
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    num_draws = max(max(samples), X1_DRAWS) if form == "branching" else X1_DRAWS
    probs = sample_probs(run, test.test_x, num_draws, bn_batches, progress=progress, dist=dist)
    labels = test.test_y
    per_draw = [classification_metrics(p, labels) for p in probs[:X1_DRAWS]]
    results = {}
    for n in samples:
        if n == 1:
            results["1"] = {k: statistics.median(d[k] for d in per_draw) for k in per_draw[0]}
        elif form == "branching":
            results[str(n)] = classification_metrics(probs[:n].mean(0), labels)
        else:
            averaged = form_probs(run, test.test_x, n, form, bn_batches, dist=dist)
            results[str(n)] = classification_metrics(averaged, labels)
    return {
        "samples": results,
        "x1_draws": [d["error"] for d in per_draw],
        "form": form,
        "method": run.config.method,
        "model": run.config.model,
        "num_test": len(labels),
        "bn_batches": bn_batches,
        "seed": seed,
        "eval_seconds": time.perf_counter() - t0,
    }


def evaluate_run(path: Path, samples: Sequence[int] = (1, 2, 4, 8, 16), data: str | None = None,
                 bn_batches: int | None = BN_BATCHES, seed: int = 0, progress: bool | None = None,
                 form: str = "branching", device: str | None = None) -> dict:
    """Load the run folder ``path`` and evaluate it (on ``data``'s test split when given, on
    ``device`` when given, else on the run's own device)."""
    config = read_config(path, device)
    dist = setup(config.device)  # before any model hits a GPU
    run = load_run(path, config=config)
    test = None
    if data is not None:
        test = load_data(data, None, run.config.data_root, run.config.download)
    result = evaluate(run, samples, test, bn_batches, seed, progress, dist, form)
    result["run"] = str(path)
    result["data"] = data or run.config.data
    return result


def format_table(rows: dict[str, dict]) -> str:
    """A plain-text table of ``{label: {"error", "nll", "ece", "brier"}}`` (errors in %)."""
    lines = [f"{'':<16}{'error %':>9}{'NLL':>9}{'ECE':>9}{'Brier':>9}"]
    for label, m in rows.items():
        lines.append(f"{label:<16}{100 * m['error']:>9.2f}{m['nll']:>9.4f}{m['ece']:>9.4f}"
                     f"{m['brier']:>9.4f}")
    return "\n".join(lines)
