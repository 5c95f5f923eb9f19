"""Calibration of averaged predictions: reliability bins and metrics versus the number N of
posterior samples averaged. The metrics themselves are :mod:`pyro_implicit.metrics`'."""

from __future__ import annotations

import numpy as np
import torch

from ..metrics import classification_metrics

METRICS = ("error", "nll", "ece", "brier")


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def reliability(probs, labels, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Reliability diagram of probabilities (n, C): for each of ``num_bins`` equal-width
    confidence bins (the ECE's bins), ``count``, mean ``confidence`` and ``accuracy`` (NaN for
    empty bins), plus the bin ``edges``."""
    probs, labels = _tensor(probs).double(), _tensor(labels).long()
    conf, pred = probs.max(-1)
    bins = torch.clamp((conf * num_bins).ceil().long() - 1, 0, num_bins - 1)
    count = torch.bincount(bins, minlength=num_bins).double()
    conf_sum = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, bins, conf)
    correct = torch.zeros(num_bins, dtype=torch.float64).index_add_(
        0, bins, (pred == labels).double())
    with np.errstate(invalid="ignore"):
        return {"edges": np.linspace(0, 1, num_bins + 1), "count": count.numpy().astype(np.int64),
                "confidence": (conf_sum / count).numpy(), "accuracy": (correct / count).numpy()}


def averaging_sizes(num_draws: int) -> list[int]:
    """N = 1, 2, 4, ... up to ``num_draws``, and ``num_draws`` itself."""
    sizes = [2**k for k in range(num_draws.bit_length()) if 2**k <= num_draws]
    return sorted({*sizes, num_draws})


def averaging_curve(probs, labels, sizes: list[int] | None = None) -> dict[int, dict[str, float]]:
    """Metrics of N-sample model averages for each N in ``sizes`` (default: powers of two).

    ``probs`` holds S draws (S, n, C). For each N the S draws are split into floor(S / N)
    disjoint groups of N; each group's averaged probabilities are scored and the metrics are
    averaged over groups: an estimate of the expected metric of an N-sample average.
    """
    probs, labels = _tensor(probs), _tensor(labels).long()
    sizes = averaging_sizes(len(probs)) if sizes is None else sizes
    if not sizes or min(sizes) < 1 or max(sizes) > len(probs):
        raise ValueError(f"averaging sizes {sizes} must lie in 1..{len(probs)} (the draws)")
    curve = {}
    for n in sizes:
        groups = [classification_metrics(probs[i:i + n].mean(0), labels)
                  for i in range(0, len(probs) - n + 1, n)]
        curve[n] = {k: float(np.mean([g[k] for g in groups])) for k in METRICS}
    return curve
