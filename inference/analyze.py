"""``pyro-implicit analyze``: posterior analysis of run folders into netCDF and a JSON summary.

One run gives ``draws`` weight draws and ``predictive_draws`` test-set predictions (one of each
for a point estimate); several runs form an ensemble with one draw per member. The results are
an ``arviz.InferenceData`` (layout in :mod:`pyro_implicit.analysis`), written as
``DIR/posterior.nc``, and ``DIR/summary.json`` (see :func:`summarize`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import arviz as az
import numpy as np
import pyro
import torch

from pyro_implicit import classification_metrics
from pyro_implicit.analysis import (
    WeightLayout,
    averaging_curve,
    disagreement,
    draw_probs,
    draw_weights,
    fault_table,
    observed_labels,
    reliability,
    select_weights,
    selective_curves,
    to_inference_data,
    uncertainty_summary,
    weight_correlations,
)

from .config import TrainConfig
from .data import load_data
from .evaluate import BN_BATCHES, sample_probs
from .images import ImageData
from .outputs import check_output_folder, json_safe, write_atomic_path, write_json
from .runs import Run, is_finished, is_run, load_run, read_config
from .train import fit

POSTERIOR, SUMMARY, SELECTIVE = "posterior.nc", "summary.json", "selective.png"
FAULT_MODELS = 4  # the paper's "quadruple fault"
TINY = {"model": "wrn-10-1", "data": "digits", "epochs": 8}  # stand-in runs: seconds each


def load_runs(paths: Iterable[Path | str], base: Path | str | None = None) -> list[Run]:
    """Load run folders, decoding each dataset once for all runs that share it.

    A relative ``imagefolder:PATH`` in a run's config is resolved against ``base`` (the folder
    the runs were trained from; default: the current directory).
    """
    cache: dict[tuple, ImageData] = {}
    runs = []
    for path in map(Path, paths):
        config = read_config(path)
        spec = config.data
        if base is not None and spec.startswith("imagefolder:"):
            spec = f"imagefolder:{Path(base) / spec.split(':', 1)[1]}"
        key = (spec, config.train_subset, config.data_root)
        if key not in cache:
            cache[key] = load_data(spec, config.train_subset, config.data_root, config.download)
        runs.append(load_run(path, cache[key], config=config))
    return runs


def ensure_runs(root: Path | str, configs: Mapping[str, TrainConfig],
                progress: bool | None = False) -> dict[str, Path]:
    """Train each config into ``root/name`` unless a finished run is already there (used by the
    notebooks to make tiny runs when they are given none); returns name -> run folder."""
    folders = {}
    for name, config in configs.items():
        folder = Path(root) / name
        if not is_finished(folder):
            pyro.clear_param_store()
            fit(None if is_run(folder) else config, folder, resume=is_run(folder),
                progress=progress)
        folders[name] = folder
    return folders


def open_runs(folders: Mapping[str, Mapping[str, object]], root: Path | str | None = None,
              base: Path | str | None = None, tiny: Mapping[str, object] = TINY) -> dict[str, Run]:
    """Load ``root/name`` for each name in ``folders``, whose values say what each run is
    (TrainConfig fields, e.g. ``{"method": "map", "seed": 1}``; checked against its config).

    With ``root=None`` tiny stand-ins ``TrainConfig(**tiny, **fields)`` are trained in a new
    temporary folder first: how the notebooks run when given no runs (and in the tests).
    """
    if root is None:
        root = tempfile.mkdtemp(prefix="pyro-implicit-tiny-runs-")
        ensure_runs(root, {name: TrainConfig(**{**tiny, **fields})
                           for name, fields in folders.items()})
    runs = dict(zip(folders, load_runs([Path(root) / name for name in folders], base),
                    strict=True))
    for name, run in runs.items():
        found = {k: getattr(run.config, k) for k in folders[name]}
        if found != dict(folders[name]):
            raise ValueError(f"{Path(root) / name} has {found}, expected {dict(folders[name])}")
    return runs


def _test_points(num_test: int, subset: int | None, seed: int) -> np.ndarray:
    if subset is None:
        return np.arange(num_test)
    if not 1 <= subset <= num_test:
        raise ValueError(f"test subset {subset} must lie in 1..{num_test} (the test set's size)")
    return np.sort(np.random.default_rng(seed).choice(num_test, subset, replace=False))


def _describe(runs: Sequence[Run]) -> dict[str, str]:
    """What the runs are, for attrs: config values (joined when ensemble members differ)."""
    def joined(key: str, members: Sequence[Run]) -> str:
        return ",".join(sorted({str(getattr(run.config, key)) for run in members}))

    described = {k: joined(k, runs) for k in ("method", "model", "data", "epochs")}
    latent = [run for run in runs if not run.guide.is_point]  # z sharing and p(z) mean nothing
    if latent:                                                 # for point estimates
        described.update({k: joined(k, latent) for k in ("strategy", "prior")})
    return described


def analyze(
    runs: Run | Sequence[Run],
    draws: int = 1000,
    pairs: int = 1000,
    predictive_draws: int = 16,
    weights: Iterable[str] = (),
    bn_batches: int | None = BN_BATCHES,
    test_subset: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> az.InferenceData:
    """The InferenceData of one run's posterior (or of an ensemble of runs, one draw each).

    Weights: ``pairs`` random pairs within residual blocks and as many across blocks, plus the
    named ``weights``. Predictions: on the run's test set (``test_subset`` random points of it
    when given), BN recalibrated per draw over ``bn_batches`` training batches (None: all);
    ``predictive_draws=0`` skips them (weights only, no data pass). Draw d of the predictions
    is draw d of the weights: both replay the guide's latent draws from ``seed`` (for guides
    whose draws depend on the RNG alone, like the hypernetwork's z).
    """
    runs = [runs] if isinstance(runs, Run) else list(runs)
    if not runs:
        raise ValueError("nothing to analyse: give at least one run")
    if draws < 1 or predictive_draws < 0:
        raise ValueError(f"need draws >= 1 and predictive_draws >= 0, got {draws} and "
                         f"{predictive_draws}")
    layout = WeightLayout.of(runs[0].model)
    data = runs[0].data
    for run in runs[1:]:
        if WeightLayout.of(run.model) != layout or run.data.classes != data.classes:
            raise ValueError(f"ensemble members must share the network and classes: "
                             f"{run.config.model} on {run.data.classes} vs {runs[0].config.model}"
                             f" on {data.classes}")
    selection = select_weights(layout, pairs, weights, seed)
    points = _test_points(len(data.test_y), test_subset, seed)
    test_x = data.test_x[torch.from_numpy(points)]
    ensemble = len(runs) > 1
    values, probs = [], []
    for run in runs:
        pyro.set_rng_seed(seed)
        run.own_param_store()
        w, latents = draw_weights(run.model, run.guide, selection.refs, 1 if ensemble else draws)
        values.append(w)
        if predictive_draws:
            pyro.set_rng_seed(seed)  # the same latents again, now with BN recalibration
            n = 1 if ensemble or run.guide.is_point else predictive_draws
            probs.append(sample_probs(run, test_x, n, bn_batches, progress=progress))
    z_groups = None if ensemble else runs[0].guide.z_groups  # hypernetwork z
    attrs = {**_describe(runs), "members": len(runs), "seed": seed,
             "bn_batches": "all" if bn_batches is None else bn_batches}
    return to_inference_data(
        selection, torch.cat(values), None if z_groups is None else latents, z_groups,
        torch.cat(probs) if probs else None,
        data.test_y[torch.from_numpy(points)], data.classes, points, attrs)


def summarize(idata: az.InferenceData, fault_models: int = FAULT_MODELS) -> dict:
    """The numbers of an analysis InferenceData, as written to ``summary.json``:

    - ``correlation``: mean |Pearson r| of the ``within``- and ``across``-block pairs over the
      ``draws`` posterior draws, ``within_pairs``/``across_pairs``, and ``independent``, the
      level two independent weights would show (None where fewer than 3 draws);
    - ``fault_table``: ``models`` (the first min(4, draws) predictive draws) and ``counts``
      {"k": test points exactly k of them misclassify}, summing to ``num_test``;
    - ``disagreement``: mean pairwise disagreement over all predictive draws (None for one);
    - ``averaging``: {"N": error, nll, ece, brier of N-sample averages} for N = 1, 2, 4, ...;
    - ``calibration``: error, nll, ece, brier of the average of all predictive draws and its
      ``reliability`` bins (``confidence``, ``accuracy``, ``count``; 15 equal-width bins);
    - ``uncertainty``: mean predictive entropy, ``aleatoric`` (expected entropy) and
      ``epistemic`` (mutual information) nats per point, and the selective-prediction ``aurc``
      of the average ranked by each score.

    The predictive keys are left out when ``idata`` holds weights only.
    """
    summary = {"draws": int(idata.posterior.sizes["draw"]),
               "correlation": weight_correlations(idata)}
    if "posterior_predictive" in idata.groups():
        probs, labels = draw_probs(idata), observed_labels(idata)
        models = min(fault_models, len(probs))
        mean = torch.as_tensor(probs.mean(0))
        bins = reliability(mean, labels)
        summary.update({
            "predictive_draws": len(probs),
            "num_test": len(labels),
            "fault_table": {"models": models, "counts": dict(enumerate(
                fault_table(probs[:models], labels).tolist()))},
            "disagreement": disagreement(probs),
            "averaging": averaging_curve(probs, labels),
            "calibration": {**classification_metrics(mean, torch.as_tensor(labels)),
                            "reliability": {k: bins[k] for k in ("confidence", "accuracy",
                                                                 "count")}},
            "uncertainty": uncertainty_summary(idata),
        })
    return json_safe(summary)


def analyze_runs(paths: Sequence[Path | str], out: Path | str, **options) -> dict:
    """Load ``paths`` (one run, or several as an ensemble), analyse them with ``options`` (see
    :func:`analyze`) and write ``out/posterior.nc`` and ``out/summary.json``; return the
    summary. ``out`` is checked writable before any work."""
    out = check_output_folder(out, "analyze --out")
    runs = load_runs(paths)
    idata = analyze(runs, **options)
    names = [str(p) for p in paths]
    summary = {"runs": names, **idata.posterior.attrs, **summarize(idata)}
    for group in idata.groups():
        idata[group].attrs["runs"] = json.dumps(names)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic_path(out / POSTERIOR, lambda tmp: idata.to_netcdf(str(tmp)))
    if "posterior_predictive" in idata.groups():
        write_atomic_path(out / SELECTIVE, lambda tmp: _plot_selective(idata, tmp))
    write_json(out / SUMMARY, summary)
    return summary


def _plot_selective(idata: az.InferenceData, path: Path) -> None:
    """The risk-coverage curves of the draws' average, one per uncertainty score, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_implicit.uncertainty import plot_selective

    ax = plot_selective(selective_curves(idata))
    ax.set_title(f"selective prediction, {int(idata.posterior_predictive.sizes['draw'])} draws")
    ax.figure.tight_layout()
    ax.figure.savefig(path, format="png", dpi=110)
    plt.close(ax.figure)
