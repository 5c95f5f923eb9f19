"""Classification metrics of predicted probabilities: error, NLL, ECE, Brier."""

from __future__ import annotations

import torch


def error(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction misclassified by the arg-max class."""
    return (probs.argmax(-1) != labels).double().mean().item()


def nll(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true labels."""
    p = probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1).double()
    return (-p.clamp_min(eps).log()).mean().item()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over points of the squared distance between probabilities and the one-hot label."""
    onehot = torch.nn.functional.one_hot(labels, probs.shape[-1]).double()
    return (probs.double() - onehot).square().sum(-1).mean().item()


def ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    """Expected calibration error with ``num_bins`` equal-width confidence bins."""
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    bins = torch.clamp((conf * num_bins).ceil().long() - 1, 0, num_bins - 1)
    gap = torch.zeros(num_bins, dtype=torch.float64, device=probs.device)
    gap.index_add_(0, bins, conf - correct)
    return (gap.abs().sum() / conf.numel()).item()


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """All four metrics as fractions: ``error``, ``nll``, ``ece``, ``brier``."""
    return {
        "error": error(probs, labels),
        "nll": nll(probs, labels),
        "ece": ece(probs, labels),
        "brier": brier(probs, labels),
    }
