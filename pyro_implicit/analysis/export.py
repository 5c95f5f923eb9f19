"""Posterior draws as an ``arviz.InferenceData`` (layout in :mod:`pyro_implicit.analysis`), and
readers that turn one back into the arrays the other analysis functions take."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import SimpleNamespace

import arviz as az
import numpy as np
import torch
import xarray as xr

from ..guide import PosteriorGuide
from ..model import BayesianNetwork, batchnorm_layers
from ..posterior import FrozenPosterior, eval_mode, freeze_posterior, sample_logits
from ..uncertainty import (
    SCORES,
    aurc,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    selective_curve,
    uncertainty_scores,
)
from .weights import (
    PAIR_KINDS,
    WeightLayout,
    WeightRef,
    WeightSelection,
    abs_correlations,
    draw_weights,
    independent_level,
    mean_abs_correlation,
    select_weights,
)

EPS = 1e-12  # probability floor of the log-likelihood, as in pyro_implicit.metrics.nll
DRAWS = 256  # posterior_inference_data's default: enough for stable PSIS-LOO (docs/analysis.md)


def _chained(values, dims: Sequence[str], coords: Mapping) -> xr.DataArray:
    """(draws, ...) values with a chain axis of length 1 in front (VI draws: one chain)."""
    values = np.asarray(values.cpu() if isinstance(values, torch.Tensor) else values)[None]
    return xr.DataArray(values, dims=("chain", "draw", *dims),
                        coords={"chain": [0], "draw": np.arange(values.shape[1]), **coords})


def _attr(value):
    return value if isinstance(value, str | int | float) else str(value)


def to_inference_data(
    selection: WeightSelection | None = None,
    weights: np.ndarray | torch.Tensor | None = None,
    latents: np.ndarray | torch.Tensor | None = None,
    z_groups: Sequence[str] | None = None,
    probs: np.ndarray | torch.Tensor | None = None,
    labels: np.ndarray | torch.Tensor | None = None,
    classes: Sequence[str] | None = None,
    test_points: Sequence[int] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> az.InferenceData:
    """Build the InferenceData of posterior draws; every part is optional.

    ``weights`` (draws, K) are the values of ``selection.refs``; ``latents`` (draws, groups,
    z_dim) the z of the same draws, one row per z group named in ``z_groups``; ``probs``
    (draws, n, C) the class probabilities of test points ``test_points`` (default 0..n-1) with
    true ``labels`` (n,) and class names ``classes``. ``attrs`` are stored on every group.
    """
    groups: dict[str, xr.Dataset] = {}
    posterior: dict[str, xr.DataArray] = {}
    if weights is not None:
        if selection is None:
            raise ValueError("weights need the selection that names them")
        posterior["w"] = _chained(weights, ("weight",), {
            "weight": selection.labels, "site": ("weight", [r.site for r in selection.refs]),
            "block": ("weight", list(selection.blocks))})
        pairs = np.concatenate([selection.pairs[k] for k in PAIR_KINDS])
        kinds = [k for k in PAIR_KINDS for _ in range(len(selection.pairs[k]))]
        groups["constant_data"] = xr.Dataset(
            {"pairs": (("pair", "end"), pairs)}, coords={"kind": ("pair", kinds)})
    if latents is not None:
        names = list(z_groups) if z_groups is not None else list(range(latents.shape[1]))
        posterior["z"] = _chained(latents, ("z_group", "z_dim"),
                                  {"z_group": names, "z_dim": np.arange(latents.shape[2])})
    if posterior:
        groups["posterior"] = xr.Dataset(posterior)
    if probs is not None:
        if labels is None:
            raise ValueError("probabilities of a test set need its labels")
        probs = np.asarray(probs.cpu() if isinstance(probs, torch.Tensor) else probs)
        labels = np.asarray(labels).astype(np.int64)
        points = np.arange(len(labels)) if test_points is None else np.asarray(test_points)
        names = list(classes) if classes is not None else list(range(probs.shape[-1]))
        coords = {"test_point": points}
        groups["posterior_predictive"] = xr.Dataset(
            {"probs": _chained(probs, ("test_point", "class"), {**coords, "class": names})})
        true = np.take_along_axis(probs, labels[None, :, None], -1)[..., 0]
        groups["log_likelihood"] = xr.Dataset(
            {"y": _chained(np.log(np.maximum(true.astype(np.float64), EPS)), ("test_point",),
                           coords)})
        groups["observed_data"] = xr.Dataset({"y": ("test_point", labels)}, coords=coords)
        draws = torch.as_tensor(probs)
        groups["uncertainty"] = xr.Dataset(
            {"predictive_entropy": ("test_point", predictive_entropy(draws).numpy()),
             "expected_entropy": ("test_point", expected_entropy(draws).numpy()),
             "mutual_information": ("test_point", mutual_information(draws).numpy())},
            coords=coords)
    if not groups:
        raise ValueError("nothing to export: give weights, latents and/or probs")
    for ds in groups.values():
        ds.attrs.update({k: _attr(v) for k, v in (attrs or {}).items()})
    return az.InferenceData(**groups)


@torch.no_grad()
def posterior_inference_data(
    model: BayesianNetwork,
    posterior: PosteriorGuide | FrozenPosterior,
    x: torch.Tensor,
    y: torch.Tensor,
    num_draws: int | None = None,
    batches: Callable[[], Iterable[torch.Tensor]] | None = None,
    num_batches: int | None = None,
    weights: Iterable[str | WeightRef] = (),
    num_pairs: int = 100,
    seed: int = 0,
    classes: Sequence[str] | None = None,
    batch_size: int = 256,
) -> az.InferenceData:
    """The InferenceData of a posterior on test data ``x``, ``y`` in one call, ready for
    ``az.waic`` / ``az.loo``: posterior, posterior_predictive, log_likelihood, observed_data.

    ``posterior`` is a guide, from which ``num_draws`` draws are taken (default ``DRAWS``; one
    for a point estimate) with BN statistics recalibrated per draw over ``batches()`` (training
    inputs, ``num_batches`` of them, all by default; see :func:`~pyro_implicit.freeze_posterior`),
    or a :class:`~pyro_implicit.FrozenPosterior`, whose draws and statistics are used as they
    are. The posterior group holds each draw's z (guides with z groups) and the values of the
    named ``weights`` plus ``num_pairs`` random within- and across-block pairs drawn with
    ``seed`` (``constant_data``, for :func:`weight_correlations`). Every group's draw d is
    posterior draw d; the layout is :func:`to_inference_data`'s.
    """
    frozen = posterior if isinstance(posterior, FrozenPosterior) else None
    if frozen is not None and (num_draws is not None or batches is not None):
        raise ValueError("a frozen posterior has its draws and BN statistics: num_draws and "
                         "batches are for guides")
    guide = posterior if frozen is None else frozen.guide
    weights = list(weights)
    selection = (select_weights(WeightLayout.of(model), num_pairs, weights, seed)
                 if num_pairs or weights else None)
    has_z = guide.z_groups is not None and not guide.is_point
    if selection is None and not has_z:
        raise ValueError(f"{type(guide).__name__} has no z groups: name weights or ask for "
                         "num_pairs > 0 so that the posterior group has variables")
    if frozen is None:
        if batches is None and batchnorm_layers(model.net) and not guide.is_point:
            warnings.warn("no training batches: every draw uses the network's own BN "
                          "statistics; pass batches= to recalibrate them per draw",
                          stacklevel=2)
        count = 1 if guide.is_point else DRAWS if num_draws is None else num_draws
        frozen = freeze_posterior(model, guide, count, batches, num_batches)
    values = None
    if selection is not None:  # a guide replaying the frozen latents, in order
        replay = SimpleNamespace(is_point=False, sample_latent=iter(frozen.latents).__next__,
                                 weights=guide.weights)
        values, _ = draw_weights(model, replay, selection.refs, len(frozen))
    with eval_mode(model):
        probs = torch.stack([
            torch.cat([sample_logits(model, frozen, i, xb).softmax(-1).cpu()
                       for xb in x.split(batch_size)]) for i in range(len(frozen))])
    return to_inference_data(selection, values, frozen.latents if has_z else None,
                             guide.z_groups, probs, y.cpu(), classes)


def stacked(data: xr.DataArray) -> np.ndarray:
    """Values with (chain, draw) merged into one leading sample axis."""
    return data.stack(sample=("chain", "draw")).transpose("sample", ...).values


def draw_probs(idata: az.InferenceData) -> np.ndarray:
    """Per-draw class probabilities (S, n, C) from ``posterior_predictive.probs``."""
    return stacked(idata.posterior_predictive["probs"])


def observed_labels(idata: az.InferenceData) -> np.ndarray:
    """True labels (n,) from ``observed_data.y``."""
    return idata.observed_data["y"].values


def _pair_rows(idata: az.InferenceData, kind: str) -> np.ndarray:
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown pair kind {kind!r}; choose one of: {', '.join(PAIR_KINDS)}")
    data = idata.constant_data
    return data["pairs"].values[data["kind"].values == kind]


def weight_pairs(idata: az.InferenceData, kind: str) -> list[tuple[str, str]]:
    """The random pairs of ``kind`` ("within" or "across"), as weight labels."""
    labels = idata.posterior["weight"].values
    return [(str(labels[a]), str(labels[b])) for a, b in _pair_rows(idata, kind)]


def pair_correlations(idata: az.InferenceData, kind: str) -> np.ndarray:
    """|Pearson r| over the posterior draws of each random pair of ``kind`` (NaN: undefined)."""
    return abs_correlations(stacked(idata.posterior["w"]), _pair_rows(idata, kind))


def weight_correlations(idata: az.InferenceData) -> dict[str, float | int | None]:
    """Mean |Pearson r| of the "within"-block and "across"-block pairs over the posterior draws
    (None where undefined: fewer than 3 draws, no such pairs), the number of pairs of each kind,
    and ``independent``: the mean |r| two independent weights would show with as many draws."""
    draws = stacked(idata.posterior["w"])
    result: dict[str, float | int | None] = {"draws": len(draws)}
    for kind in PAIR_KINDS:
        rows = _pair_rows(idata, kind)
        result[kind] = mean_abs_correlation(draws, rows)
        result[f"{kind}_pairs"] = len(rows)
    level = independent_level(len(draws))
    result["independent"] = None if np.isnan(level) else level
    return result


def _ranked(idata: az.InferenceData) -> tuple[dict[str, torch.Tensor | None], torch.Tensor]:
    """Each uncertainty score of the draws' average per test point, and whether it errs."""
    draws = torch.as_tensor(draw_probs(idata))
    mean = draws.mean(0)
    wrong = mean.argmax(-1) != torch.as_tensor(observed_labels(idata))
    return uncertainty_scores(mean, draws), wrong


def selective_curves(idata: az.InferenceData) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Risk-coverage curves of the draws' average, ranked by each uncertainty score
    (``max_prob``, ``entropy``, ``mutual_information``): {score: (coverage, risk)}."""
    scores, wrong = _ranked(idata)
    return {name: selective_curve(scores[name], wrong) for name in SCORES}


def uncertainty_summary(idata: az.InferenceData) -> dict[str, object]:
    """Means of the per-point ``uncertainty`` group (nats) and the AURC of the draws' average
    ranked by each score."""
    group = idata["uncertainty"]
    scores, wrong = _ranked(idata)
    return {"predictive_entropy": float(group["predictive_entropy"].mean()),
            "aleatoric": float(group["expected_entropy"].mean()),
            "epistemic": float(group["mutual_information"].mean()),
            "aurc": {name: aurc(scores[name], wrong) for name in SCORES}}
