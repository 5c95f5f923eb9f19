import math

import torch

from pyro_implicit.metrics import brier, classification_metrics, ece, error, nll


def test_metrics_match_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    labels = torch.tensor([0, 0, 1, 1])
    assert error(probs, labels) == 0.5
    assert math.isclose(nll(probs, labels),
                        -(math.log(0.9) + math.log(0.4) + math.log(0.3) + math.log(0.8)) / 4,
                        rel_tol=1e-6)
    assert math.isclose(brier(probs, labels),
                        (2 * 0.01 + 2 * 0.36 + 2 * 0.49 + 2 * 0.04) / 4, rel_tol=1e-6)
    # 2 bins: [0, .5] empty; (.5, 1]: confidences .9 .6 .7 .8 (mean .75), accuracy 2/4
    assert math.isclose(ece(probs, labels, num_bins=2), 0.25, rel_tol=1e-6)
    # 15 bins: per-point bins, |conf - correct| weighted by 1/4 each
    assert math.isclose(ece(probs, labels, num_bins=15), (0.1 + 0.6 + 0.7 + 0.2) / 4, rel_tol=1e-6)


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = torch.tensor([[1.0, 0.0]] * 3)
    labels = torch.zeros(3, dtype=torch.long)
    m = classification_metrics(probs, labels)
    assert m == {"error": 0.0, "nll": 0.0, "ece": 0.0, "brier": 0.0}
