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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pyro
import torch
from tqdm.auto import tqdm

from pyro_implicit import classification_metrics, eval_mode, freeze_posterior, recalibrate_bn
from pyro_implicit.forms import assemble, check_form, draws_needed
from pyro_implicit.metrics import ece, error, nll
from pyro_implicit.model import batchnorm_layers
from pyro_implicit.posterior import sample_logits
from pyro_implicit.uncertainty import (
    aurc,
    deep_ensemble_equivalent,
    detection_metrics,
    expected_entropy,
    fit_temperature,
    mutual_information,
    temperature_scale,
    uncertainty_scores,
)

from .data import load_data
from .distributed import SINGLE, Dist, setup
from .folders import is_lazy, uint8_batches
from .images import ImageData
from .runs import Run, load_run, read_config
from .shift import (
    CIFAR10_CLASSES,
    cached_corrupt,
    check_corruptions,
    check_severities,
    check_shift,
    cifar10c_sets,
    fit_images,
)

X1_DRAWS = 5
# BN recalibration batches per sample unless told (None: one full pass, the paper's choice):
# on the c10-10k run, x1 and x16 error within 0.1 points of a full pass at 64% of its cost
# (an eighth on the 50k CIFAR training set); see README "Performance"
BN_BATCHES = 50


# Each draw costs a BN recalibration and a pass over the test set (about 10 s for wrn-16-2 on
# the 10k CIFAR subset here, so 1024 draws take hours), and an average of N draws moves by
# O(1/N): beyond a thousand nothing measurable changes.
MAX_SAMPLES = 1024
# training items a temperature is fitted on by default (one scalar: a few thousand suffice)
CALIBRATION_SIZE = 2000
IN_SAMPLE = "train-subset (in-sample)"


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


def _freeze(run: Run, num_draws: int, bn_batches: int | None, progress: bool | None,
            dist: Dist):
    """``num_draws`` frozen posterior samples, BN recalibrated each (one for a point estimate)."""
    run.own_param_store()
    return freeze_posterior(run.model, run.guide, 1 if run.guide.is_point else num_draws,
                            run.train_inputs, bn_batches, progress=progress,
                            distributed=dist.active)


@torch.no_grad()
def _posterior_probs(run: Run, posterior, test_x, num_draws: int, batch_size: int = 128,
                     progress: bool | None = None, dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities (num_draws, n, C) of the frozen samples on ``test_x``, sample by
    sample (its kernels generated once), batch by batch; a single sample is repeated."""
    probs = torch.zeros(len(posterior), len(test_x), run.data.num_classes, dtype=torch.float64)
    inputs = _test_inputs(run, test_x, batch_size, dist)
    with eval_mode(run.model):
        for i in tqdm(range(len(posterior)), desc="evaluate", leave=False,
                      disable=not dist.is_main or (None if progress is None else not progress)):
            for start, x in inputs():
                logits = sample_logits(run.model, posterior, i, x)
                probs[i, start:start + len(x)] = logits.softmax(-1).cpu()
    if dist.active:
        torch.distributed.all_reduce(probs)
    return probs.float().expand(num_draws, -1, -1)


def sample_probs(run: Run, test_x: torch.Tensor, num_draws: int, bn_batches: int | None = None,
                 batch_size: int = 128, progress: bool | None = None,
                 dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities of ``num_draws`` posterior samples on ``test_x``: (draws, n, C).

    A point estimate (no latent) is recalibrated and evaluated once and repeated. Under
    torchrun the recalibration passes and the test batches are shared among the ranks.
    """
    posterior = _freeze(run, num_draws, bn_batches, progress, dist)
    return _posterior_probs(run, posterior, test_x, num_draws, batch_size, progress, dist)


@torch.no_grad()
def form_network(run: Run, n: int, form: str, bn_batches: int | None = None,
                 dist: Dist = SINGLE) -> torch.nn.Module:
    """The network averaging ``n`` fresh posterior draws in ``form`` (parallelizing or
    widening), its BN statistics recalibrated for the assembly, in eval mode."""
    latents = [run.guide.sample_latent() for _ in range(draws_needed(form, n))]
    net = assemble(run.model, lambda m: run.guide.weights(latents[m]), n, form)
    if batchnorm_layers(net):
        recalibrate_bn(net, run.train_inputs(), num_batches=bn_batches, distributed=dist.active)
    return net.eval()


@torch.no_grad()
def _batched_probs(run: Run, images, probs_of, batch_size: int = 128,
                   dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities (n, C) on ``images``: ``probs_of(x)`` of this rank's normalised
    batches, gathered over the ranks."""
    probs = torch.zeros(len(images), run.data.num_classes, dtype=torch.float64)
    for start, x in _test_inputs(run, images, batch_size, dist)():
        probs[start:start + len(x)] = probs_of(x).cpu()
    if dist.active:
        torch.distributed.all_reduce(probs)
    return probs.float()


def _network_probs(run: Run, net: torch.nn.Module, test_x, batch_size: int = 128,
                   dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities (n, C) of ``net`` on ``test_x``."""
    return _batched_probs(run, test_x, lambda x: net(x).softmax(-1), batch_size, dist)


def closed_form_probs(run: Run, images, bn_stats: dict[str, torch.Tensor] | None = None,
                      batch_size: int = 128, dist: Dist = SINGLE) -> torch.Tensor:
    """Class probabilities (n, C) of the guide's closed-form predictive on ``images``, for a
    guide offering ``predictive_probs(model, x, bn_stats)`` (last-layer Laplace's
    probit-approximated GLM predictive). ``bn_stats``: BN statistics by model site (a frozen
    sample's recalibrated ones, the same for every draw of a last-layer posterior)."""
    with eval_mode(run.model):
        return _batched_probs(run, images,
                              lambda x: run.guide.predictive_probs(run.model, x, bn_stats),
                              batch_size, dist)


Variant = tuple[torch.Tensor, torch.Tensor | None]  # averaged probs (n, C), draws (N, n, C)


class Predictor:
    """A run's posterior fixed once (draws frozen, BN recalibrated; for the forms
    parallelizing and widening one assembled network per N > 1) and applied to any images.

    :meth:`variants` gives, for each N, what its metrics are computed from: one
    (averaged probabilities, the draws averaged) pair per single draw for ``"1"`` (reported as
    medians), one pair for N > 1 (draws None for an assembled network, which only gives the
    average).
    """

    def __init__(self, run: Run, samples: Sequence[int], form: str = "branching",
                 bn_batches: int | None = BN_BATCHES, progress: bool | None = None,
                 dist: Dist = SINGLE, batch_size: int = 128):
        self.run, self.samples, self.form = run, check_samples(samples), check_form(form)
        self.progress, self.dist, self.batch_size = progress, dist, batch_size
        branching = form == "branching"
        self.num_draws = max(max(self.samples), X1_DRAWS) if branching else X1_DRAWS
        self.posterior = _freeze(run, self.num_draws, bn_batches, progress, dist)
        self.networks = {} if branching else {
            n: form_network(run, n, form, bn_batches, dist) for n in self.samples if n > 1}

    def draws(self, images) -> torch.Tensor:
        """Class probabilities of every frozen draw on ``images``: (draws, n, C)."""
        return _posterior_probs(self.run, self.posterior, images, self.num_draws,
                                self.batch_size, self.progress, self.dist)

    def variants(self, images) -> dict[str, list[Variant]]:
        """Per N (as str), the (averaged probabilities, draws) pairs of ``images``."""
        draws = self.draws(images)
        result = {}
        for n in self.samples:
            if n == 1:
                result["1"] = [(d, d[None]) for d in draws[:X1_DRAWS]]
            elif n in self.networks:
                net = self.networks[n]
                result[str(n)] = [(_network_probs(self.run, net, images, self.batch_size,
                                                  self.dist), None)]
            else:
                result[str(n)] = [(draws[:n].mean(0), draws[:n])]
        return result


def _median(records: list[dict]) -> dict:
    """The key-wise median of ``records`` (nested dicts alike), None where any value is."""
    first = records[0]
    if isinstance(first, dict):
        return {k: _median([r[k] for r in records]) for k in first}
    return None if any(r is None for r in records) else statistics.median(records)


def _test_metrics(probs: torch.Tensor, draws: torch.Tensor | None, labels: torch.Tensor,
                  calibration: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Error, NLL, ECE, Brier; the entropy decomposition; selective prediction (AURC by each
    uncertainty); and NLL and ECE after a temperature fitted on ``calibration`` (probs,
    labels) of the same averaged predictor."""
    scores = uncertainty_scores(probs, draws)
    wrong = probs.argmax(-1) != labels
    temperature = fit_temperature(*calibration)
    scaled = temperature_scale(probs, temperature)
    return {
        **classification_metrics(probs, labels),
        "aleatoric": None if draws is None else expected_entropy(draws).mean().item(),
        "epistemic": None if draws is None else mutual_information(draws).mean().item(),
        "selective": {k: None if v is None else aurc(v, wrong) for k, v in scores.items()},
        "calibrated": {"temperature": temperature, "nll": nll(scaled, labels),
                       "ece": ece(scaled, labels)},
    }


def _shift_metrics(predictor: Predictor, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per N: error, NLL and ECE on one shifted test set (medians over single draws at N=1)."""
    return {n: _median([{"error": error(p, labels), "nll": nll(p, labels), "ece": ece(p, labels)}
                        for p, _ in pairs])
            for n, pairs in predictor.variants(images).items()}


def _check_images(test: ImageData, run: Run, what: str) -> None:
    if test.classes != run.data.classes:
        raise ValueError(f"{what} has classes {test.classes}, the run was trained on "
                         f"{run.data.classes}")
    if not is_lazy(test.test_x) and test.test_x.shape[1:] != run.data.train_x.shape[1:]:
        raise ValueError(f"{what} images are {tuple(test.test_x.shape[1:])} (C, H, W), the "
                         f"run was trained on {tuple(run.data.train_x.shape[1:])}")


def shift_subset_index(num_items: int, size: int | None, seed: int = 0) -> torch.Tensor | None:
    """The sorted indices of a seeded subset of ``size`` of ``num_items`` shifted test items
    (None: all of them): 75 shifted copies of a 10k test set cost 75 test passes per draw."""
    if size is None or size >= num_items:
        return None
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"shift_subset must be a positive integer, got {size!r}")
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    return order[:size].sort().values


def shift_sets(run: Run, test: ImageData, shift: str, corruptions: Sequence[str] | None = None,
               severities: Sequence[int] | None = None, seed: int = 0,
               cache_dir: Path | None = None, subset: int | None = None
               ) -> Iterator[tuple[str, int, torch.Tensor, torch.Tensor]]:
    """(corruption, severity, images, labels) of ``shift``: ``corruptions`` (the test set of
    ``test`` corrupted, generated from ``seed`` and cached) or ``cifar10c:FOLDER`` (the
    published files, for a run with CIFAR-10's classes); ``subset``: a seeded subset of that
    many items of each set (:func:`shift_subset_index`)."""
    check_shift(shift)
    if shift == "corruptions":
        if is_lazy(test.test_x):
            raise ValueError("--shift corruptions needs an in-memory test set, not lazy images")
        images, labels = _subset(test.test_x, test.test_y, subset, seed)
        for name in check_corruptions(corruptions):
            for s in check_severities(severities):
                yield name, s, cached_corrupt(images, name, s, seed, cache_dir), labels
    else:
        if run.data.classes != CIFAR10_CLASSES:
            raise ValueError(f"CIFAR-10-C has CIFAR-10's classes; the run was trained on "
                             f"{run.data.classes}")
        check_corruptions(corruptions)
        for name, s, images, labels in cifar10c_sets(Path(shift.split(":", 1)[1]), corruptions,
                                                     severities):
            yield name, s, *_subset(images, labels, subset, seed)


def _subset(images: torch.Tensor, labels: torch.Tensor, size: int | None,
            seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) cut to the seeded subset of :func:`shift_subset_index`."""
    keep = shift_subset_index(len(labels), size, seed)
    return (images, labels) if keep is None else (images[keep], labels[keep])


def _mean_shift(per_set: dict[str, dict[str, dict]]) -> dict:
    """Per N, each metric averaged over every corruption and severity."""
    records = [by_n for by_severity in per_set.values() for by_n in by_severity.values()]
    return {n: {k: statistics.fmean(r[n][k] for r in records) for k in records[0][n]}
            for n in records[0]}


def check_members(members: Sequence[Run], test: ImageData) -> None:
    """Refuse deep-ensemble members that are not point estimates or not of ``test``'s classes
    and image size."""
    for member in members:
        if not member.guide.is_point:
            raise ValueError(f"deep-ensemble members are point estimates (map or mle runs); "
                             f"got a {member.config.method} run")
        _check_images(test, member, "evaluation data")


def member_curve(members: Sequence[Run], test: ImageData,
                 calibration: tuple[torch.Tensor, torch.Tensor], bn_batches: int | None = None,
                 seed: int = 0, progress: bool | None = None, dist: Dist = SINGLE) -> dict:
    """NLL of the averages of the first k = 1..K of ``members`` (independently trained point
    estimates: map or mle runs) on ``test``, raw and temperature-scaled on ``calibration``
    (the curve a deep-ensemble equivalent interpolates on)."""
    check_members(members, test)
    tested, calibrating = [], []
    for member in members:
        pyro.set_rng_seed(seed)
        posterior = _freeze(member, 1, bn_batches, progress, dist)
        tested.append(_posterior_probs(member, posterior, test.test_x, 1, progress=progress,
                                       dist=dist)[0])
        calibrating.append(_posterior_probs(member, posterior, calibration[0], 1,
                                            progress=progress, dist=dist)[0])
    curve: dict = {"nll": [], "calibrated_nll": [], "error": []}
    for k in range(1, len(members) + 1):
        average, calibrating_average = torch.stack(tested[:k]).mean(0), torch.stack(
            calibrating[:k]).mean(0)
        scaled = temperature_scale(average, fit_temperature(calibrating_average,
                                                            calibration[1]))
        curve["nll"].append(nll(average, test.test_y))
        curve["calibrated_nll"].append(nll(scaled, test.test_y))
        curve["error"].append(error(average, test.test_y))
    return curve


def add_dee(result: dict, curve: Mapping) -> dict:
    """Give every N of an :func:`evaluate` ``result`` its deep-ensemble equivalent ``dee`` (by
    calibrated NLL) on the member ``curve`` (a :func:`member_curve`, also one saved from an
    earlier evaluation on the same test and calibration sets, so the members need not be
    loaded again) and record the curve as ``dee_members``; returns ``result``."""
    for metrics in result["samples"].values():
        metrics["dee"] = deep_ensemble_equivalent(metrics["calibrated"]["nll"],
                                                  curve["calibrated_nll"])
    result["dee_members"] = dict(curve)
    return result


def calibration_subset(run: Run, size: int = CALIBRATION_SIZE,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed seeded subset of ``size`` training items (images, labels): in-sample for the
    network, which was trained on all of them."""
    order = torch.randperm(len(run.data.train_y), generator=torch.Generator().manual_seed(seed))
    keep = order[:size].sort().values
    return run.data.train_x[keep], run.data.train_y[keep]


def evaluate(run: Run, samples: Sequence[int] = (1, 2, 4, 8, 16), test: ImageData | None = None,
             bn_batches: int | None = BN_BATCHES, seed: int = 0, progress: bool | None = None,
             dist: Dist = SINGLE, form: str = "branching",
             calibration: tuple[torch.Tensor, torch.Tensor] | None = None,
             shift: str | None = None, corruptions: Sequence[str] | None = None,
             severities: Sequence[int] | None = None, ood: torch.Tensor | None = None,
             cache_dir: Path | None = None, shift_subset: int | None = None,
             dee_members: Sequence[Run] | None = None) -> dict:
    """Metrics of N-sample averages in ``form`` on the test split of ``test`` (default: the
    run's data), with uncertainty and temperature-scaled metrics (see docs/uncertainty.md).

    ``calibration``: held-out (images, labels) the temperature is fitted on (default: a seeded
    subset of the training items, in-sample). ``shift``: ``corruptions`` or
    ``cifar10c:FOLDER``, restricted to ``corruptions`` and ``severities`` when given (generated
    corruptions are cached in ``cache_dir``), each set to a seeded subset of ``shift_subset``
    items when given. ``ood``: uint8 images of another distribution (the run's input shape)
    to tell from the test set. ``dee_members``: independently trained map runs; each N then
    gets its deep-ensemble equivalent ``dee`` (by calibrated NLL, on their 1..K member curve).
    """
    check_form(form)
    samples = check_samples(samples)
    test = test or run.data
    _check_images(test, run, "evaluation data")
    if shift is not None:  # bad names fail before any work
        check_shift(shift)
        check_corruptions(corruptions)
        check_severities(severities)
        shift_subset_index(len(test.test_y), shift_subset)
    check_members(dee_members or [], test)
    in_sample = calibration is None
    calib_x, calib_y = calibration_subset(run, seed=seed) if in_sample else calibration
    pyro.set_rng_seed(seed)
    t0 = time.perf_counter()
    predictor = Predictor(run, samples, form, bn_batches, progress, dist)
    labels = test.test_y
    tested, calibrating = predictor.variants(test.test_x), predictor.variants(calib_x)
    per_draw = [classification_metrics(p, labels) for p, _ in tested["1"]]
    results = {n: _median([_test_metrics(p, d, labels, (c, calib_y))
                           for (p, d), (c, _) in zip(tested[n], calibrating[n], strict=True)])
               for n in tested}
    result = {
        "samples": results,
        "x1_draws": [d["error"] for d in per_draw],
        "form": form,
        "method": run.config.method,
        "model": run.config.model,
        "num_test": len(labels),
        "bn_batches": bn_batches,
        "seed": seed,
        "calibration": IN_SAMPLE if in_sample else f"held-out ({len(calib_y)} items)",
        "num_calibration": len(calib_y),
    }
    if dee_members:
        curve = member_curve(dee_members, test, (calib_x, calib_y), bn_batches, seed, progress,
                             dist)
        add_dee(result, {"seeds": [m.config.seed for m in dee_members], **curve})
    if hasattr(run.guide, "predictive_probs"):  # beside the N-sample Monte Carlo averages
        bn_stats = {k: v[0] for k, v in predictor.posterior.bn_stats.items()}
        closed = closed_form_probs(run, test.test_x, bn_stats, dist=dist)
        calibrating_closed = closed_form_probs(run, calib_x, bn_stats, dist=dist)
        result["probit"] = _test_metrics(closed, None, labels, (calibrating_closed, calib_y))
    if shift is not None:
        per_set: dict[str, dict] = {}
        for name, severity, images, shifted_labels in shift_sets(
                run, test, shift, corruptions, severities, seed, cache_dir, shift_subset):
            per_set.setdefault(name, {})[str(severity)] = _shift_metrics(
                predictor, images, shifted_labels)
            result["num_shift"] = len(shifted_labels)
        result["shift"] = {**per_set, "mean": _mean_shift(per_set)}
        result["shift_source"] = shift if shift != "corruptions" else f"corruptions (seed {seed})"
    if ood is not None:
        if tuple(ood.shape[1:]) != tuple(run.data.train_x.shape[1:]):
            raise ValueError(f"OOD images are {tuple(ood.shape[1:])}, the run takes "
                             f"{tuple(run.data.train_x.shape[1:])}")
        outside = predictor.variants(ood)
        result["ood"] = {n: _median([detection_metrics(uncertainty_scores(*inside),
                                                       uncertainty_scores(*out))
                                     for inside, out in zip(tested[n], outside[n], strict=True)])
                         for n in tested}
        result["num_ood"] = len(ood)
    result["eval_seconds"] = time.perf_counter() - t0
    return result


def ood_images(spec: str, run: Run) -> torch.Tensor:
    """The test split of data ``spec`` fitted to the run's input shape (``digits``: gray 8x8
    digits as RGB, upsampled)."""
    data = load_data(spec, None, run.config.data_root, run.config.download)
    if is_lazy(data.test_x):
        raise ValueError(f"--ood {spec}: lazy image folders are not supported; use imagefolder:")
    return fit_images(data.test_x, run.data.train_x.shape[1:])


def evaluate_run(path: Path, samples: Sequence[int] = (1, 2, 4, 8, 16), data: str | None = None,
                 bn_batches: int | None = BN_BATCHES, seed: int = 0, progress: bool | None = None,
                 form: str = "branching", device: str | None = None,
                 calibration_data: str | None = None, shift: str | None = None,
                 corruptions: Sequence[str] | None = None,
                 severities: Sequence[int] | None = None, ood: str | None = None,
                 cache_dir: Path | None = None, shift_subset: int | None = None,
                 dee_runs: Sequence[Path] | None = None) -> dict:
    """Load the run folder ``path`` and evaluate it (on ``data``'s test split when given, on
    ``device`` when given, else on the run's own device); ``calibration_data``: a spec whose
    test split is the held-out set of temperature scaling; ``ood``: a spec whose test split is
    the out-of-distribution set; ``dee_runs``: map run folders, the members of the deep
    ensemble equivalent; the rest as :func:`evaluate`."""
    config = read_config(path, device)
    dist = setup(config.device)  # before any model hits a GPU
    run = load_run(path, config=config)
    evaluated = data or run.config.data
    if calibration_data is not None and calibration_data == evaluated:
        raise ValueError(f"--calibration-data {calibration_data} is the evaluated test set: "
                         "fit the temperature on held-out data, never on the test set")
    test = None
    if data is not None:
        test = load_data(data, None, run.config.data_root, run.config.download)
    calibration = None
    if calibration_data is not None:
        held_out = load_data(calibration_data, None, run.config.data_root, run.config.download)
        _check_images(held_out, run, "calibration data")
        calibration = (held_out.test_x, held_out.test_y)
    members = [load_run(p, device=config.device) for p in dee_runs or []]
    result = evaluate(run, samples, test, bn_batches, seed, progress, dist, form, calibration,
                      shift, corruptions, severities,
                      None if ood is None else ood_images(ood, run), cache_dir, shift_subset,
                      members)
    if members:
        result["dee_members"]["runs"] = [str(p) for p in dee_runs]
    result["run"] = str(path)
    result["data"] = evaluated
    if calibration_data is not None:
        result["calibration"] = f"{calibration_data} test split (held-out)"
    if ood is not None:
        result["ood_data"] = ood
    return result


def format_table(rows: dict[str, dict]) -> str:
    """A plain-text table of ``{label: {"error", "nll", "ece", "brier"}}`` (errors in %)."""
    width = max([16, *(len(label) + 2 for label in rows)])
    lines = [f"{'':<{width}}{'error %':>9}{'NLL':>9}{'ECE':>9}{'Brier':>9}"]
    for label, m in rows.items():
        lines.append(f"{label:<{width}}{100 * m['error']:>9.2f}{m['nll']:>9.4f}"
                     f"{m['ece']:>9.4f}{m['brier']:>9.4f}")
    return "\n".join(lines)
