"""Figures: weight-pair scatter plots with marginals (the paper's Fig. 9), reliability diagrams
and error-versus-N curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import arviz as az
import matplotlib.pyplot as plt
import numpy as np

from .calibration import reliability


def plot_weight_pairs(
    idata: az.InferenceData,
    pairs: Sequence[tuple[str, str]],
    title: str | None = None,
    pair_titles: Sequence[str] | None = None,
    figsize_per_pair: float = 2.6,
    **pair_kwargs,
) -> plt.Figure:
    """Scatter plot and marginal histograms of each weight pair over the posterior draws, side
    by side, through ``az.plot_pair(..., marginals=True)`` (extra kwargs go to it);
    ``pair_titles`` label the panels."""
    if not pairs:
        raise ValueError("no weight pairs to plot")
    pair_titles = [""] * len(pairs) if pair_titles is None else list(pair_titles)
    fig = plt.figure(figsize=(figsize_per_pair * len(pairs), figsize_per_pair + 0.3),
                     layout="constrained")
    kwargs = {"kind": "scatter", "marginals": True, "textsize": 7,
              "marginal_kwargs": {"kind": "hist", "hist_kwargs": {"bins": 30}},
              "scatter_kwargs": {"alpha": 0.3, "s": 4}, **pair_kwargs}
    subfigs = np.atleast_1d(fig.subfigures(1, len(pairs)))
    for sub, (a, b), label in zip(subfigs, pairs, pair_titles, strict=True):
        ax = sub.subplots(2, 2, gridspec_kw={"width_ratios": (3, 1), "height_ratios": (1, 3)})
        az.plot_pair(idata, var_names=["w"], coords={"weight": [a, b]}, ax=ax, **kwargs)
        scatter, top, right = ax[1, 0], ax[0, 0], ax[1, 1]
        top.set_xlim(scatter.get_xlim())
        right.set_ylim(scatter.get_ylim())
        top.set(xticks=[], yticks=[])  # marginals: shape only, the scatter carries the scales
        right.set(xticks=[], yticks=[])
        scatter.set_xlabel(a.replace(".weight", ""), fontsize=7)
        scatter.set_ylabel(b.replace(".weight", ""), fontsize=7)
        sub.suptitle(label, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_reliability(
    probs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    num_bins: int = 15,
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """Reliability diagram: accuracy against mean confidence per confidence bin, one line per
    named set of probabilities (n, C); the diagonal is perfect calibration."""
    ax = ax or plt.figure(figsize=(4, 4), layout="constrained").gca()
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for name, p in probs.items():
        bins = reliability(p, labels, num_bins)
        keep = bins["count"] > 0
        ax.plot(bins["confidence"][keep], bins["accuracy"][keep], marker="o", ms=3, label=name)
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title="reliability")
    ax.legend(fontsize=7)
    return ax


def plot_averaging(
    curves: Mapping[str, Mapping[int, Mapping[str, float]]],
    metric: str = "error",
    ax: plt.Axes | None = None,
) -> plt.Axes:
    """``metric`` of N-sample averages against N (log scale), one line per named curve as
    returned by :func:`~pyro_implicit.analysis.averaging_curve`."""
    ax = ax or plt.figure(figsize=(4, 3), layout="constrained").gca()
    for name, curve in curves.items():
        sizes = sorted(curve)
        ax.plot(sizes, [curve[n][metric] for n in sizes], marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ticks = sorted({n for curve in curves.values() for n in curve})
    ax.set_xticks(ticks, labels=[str(n) for n in ticks])
    ax.minorticks_off()
    ax.set(xlabel="N (samples averaged)", ylabel=metric, title=f"{metric} vs N")
    ax.legend(fontsize=7)
    return ax
