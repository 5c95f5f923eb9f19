"""Diversity of M models on a test set: the k-fault table and pairwise disagreement.

The models are posterior draws of one run or independently trained networks alike; each is
given by its class probabilities (M, n, C) or its predicted labels (M, n). With M = 4 the
k-fault table is the paper's "quadruple fault" table.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def predictions(outputs: ArrayLike) -> np.ndarray:
    """Predicted labels (M, n): the arg-max of probabilities (M, n, C), or labels as given."""
    outputs = np.asarray(outputs)
    return outputs.argmax(-1) if outputs.ndim == 3 else outputs.astype(np.int64)


def fault_table(outputs: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Counts (M + 1,): entry k is the number of test points that exactly k of the M models
    misclassify (entry 0: all correct). The counts sum to the number of test points."""
    preds, labels = predictions(outputs), np.asarray(labels)
    if preds.ndim != 2 or preds.shape[1] != labels.shape[0]:
        raise ValueError(f"expected outputs for M models on {labels.shape[0]} test points, got "
                         f"shape {tuple(np.shape(outputs))}")
    faults = (preds != labels).sum(0)
    return np.bincount(faults, minlength=preds.shape[0] + 1)


def disagreement_matrix(outputs: ArrayLike) -> np.ndarray:
    """(M, M) fraction of test points on which models i and j predict different classes."""
    preds = predictions(outputs)
    return (preds[:, None, :] != preds[None, :, :]).mean(-1)


def disagreement(outputs: ArrayLike) -> float | None:
    """Mean pairwise disagreement over the M(M-1)/2 pairs of models; None for one model."""
    m = len(predictions(outputs))
    if m < 2:
        return None
    matrix = disagreement_matrix(outputs)
    return float(matrix[np.triu_indices(m, 1)].mean())
