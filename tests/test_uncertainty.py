"""Uncertainty metrics: agreement with torchmetrics / scikit-learn, temperature scaling, the
entropy decomposition, selective prediction, OOD detection scores and the deep-ensemble
equivalent."""

import json

import matplotlib
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.regression import MeanSquaredError

from pyro_implicit.metrics import brier, ece, nll
from pyro_implicit.uncertainty import (
    aupr,
    aurc,
    auroc,
    deep_ensemble_equivalent,
    detection_metrics,
    expected_entropy,
    fit_temperature,
    mutual_information,
    plot_selective,
    predictive_entropy,
    selective_curve,
    temperature_scale,
    uncertainty_scores,
)

matplotlib.use("Agg")


def random_probs(n=500, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    probs = (3 * torch.randn(n, classes, generator=g)).softmax(-1)
    return probs, torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_nll_brier_agree_with_torchmetrics(seed):
    probs, labels = random_probs(seed=seed)
    classes = probs.shape[-1]
    reference = MulticlassCalibrationError(num_classes=classes, n_bins=15, norm="l1")
    assert ece(probs, labels) == pytest.approx(reference(probs, labels).item(), abs=1e-6)
    # torchmetrics has no multiclass NLL or Brier: torch's nll_loss, and Brier as C x the MSE
    # against the one-hot labels
    assert nll(probs, labels) == pytest.approx(
        torch.nn.functional.nll_loss(probs.log(), labels).item(), rel=1e-5)
    onehot = torch.nn.functional.one_hot(labels, classes).float()
    mse = MeanSquaredError()(probs, onehot).item()
    assert brier(probs, labels) == pytest.approx(classes * mse, rel=1e-5)


def test_temperature_scaling_recovers_a_known_temperature():
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(20000, 10, generator=g)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=g).squeeze(-1)
    overconfident = (2.5 * logits).softmax(-1)  # the right logits, sharpened by 2.5
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(2.5, rel=0.05)
    calibrated = temperature_scale(overconfident, temperature)
    assert nll(calibrated, labels) < nll(overconfident, labels)
    assert torch.allclose(calibrated, logits.double().softmax(-1), atol=0.02)


def test_mutual_information_is_zero_for_a_point_estimate_and_positive_for_disagreement():
    probs, _ = random_probs(n=20)
    point = probs.expand(4, -1, -1)
    assert torch.allclose(mutual_information(point), torch.zeros(20, dtype=torch.float64),
                          atol=1e-12)
    assert torch.allclose(predictive_entropy(point), expected_entropy(point))
    eye = torch.eye(3)
    disagreeing = torch.stack([eye[[0]], eye[[1]], eye[[2]]])  # 3 confident draws, one point
    assert mutual_information(disagreeing).item() == pytest.approx(torch.log(torch.tensor(3.)))
    assert expected_entropy(disagreeing).item() == 0
    assert uncertainty_scores(probs)["mutual_information"] is None


def test_auroc_and_aupr_on_small_cases():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    positive = torch.tensor([False, False, True, True])
    # positive-negative pairs ranked right: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 (not 0.35 > 0.4)
    assert auroc(scores, positive) == 0.75
    assert auroc(torch.tensor([0.5, 0.5, 0.2]), torch.tensor([True, False, False])) == 0.75
    # thresholds 0.8 (P 1, R 1/2), 0.4 (P 1/2), 0.35 (P 2/3, R 1): AP = 1/2 + 1/2 * 2/3
    assert aupr(scores, positive) == pytest.approx(0.5 + 1 / 3)
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (300,), generator=g).double()  # many ties
    positive = torch.rand(300, generator=g) < 0.3
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    assert aupr(scores, positive) == pytest.approx(average_precision_score(positive, scores))
    with pytest.raises(ValueError, match="positive and negative"):
        auroc(scores, torch.ones(300, dtype=torch.bool))


def test_detection_metrics_take_ood_as_positive():
    inside = {"max_prob": torch.tensor([0.1, 0.2]), "mutual_information": None}
    outside = {"max_prob": torch.tensor([0.8, 0.9]), "mutual_information": None}
    result = detection_metrics(inside, outside)
    assert result["auroc"] == {"max_prob": 1.0, "mutual_information": None}
    assert result["aupr"]["max_prob"] == 1.0


def test_selective_curve_and_aurc():
    errors = torch.tensor([0, 1, 0])
    coverage, risk = selective_curve(torch.tensor([0.1, 0.2, 0.3]), errors)
    assert coverage.tolist() == pytest.approx([1 / 3, 2 / 3, 1])
    assert risk.tolist() == pytest.approx([0, 1 / 2, 1 / 3])
    assert aurc(torch.tensor([0.1, 0.2, 0.3]), errors) == pytest.approx((1 / 2 + 1 / 3) / 3)
    # all tied: every k keeps the overall error rate on average
    assert aurc(torch.zeros(3), errors) == pytest.approx(1 / 3)
    ax = plot_selective({"entropy": (coverage, risk)})
    assert ax.get_xlabel() == "fraction kept"


def test_evaluate_reports_the_deep_ensemble_equivalent_of_every_n(tmp_path, capsys):
    from pyro_implicit.inference.cli import main

    tiny = ["--model", "wrn-10-1", "--data", "digits", "--train-subset", "120", "--epochs", "1",
            "--batch-size", "32"]
    maps = []
    for seed in (0, 1):
        maps.append(tmp_path / f"map-s{seed}")
        assert main(["train", *tiny, "--method", "map", "--seed", str(seed), "--out",
                     str(maps[-1])]) == 0
    hyper, out = tmp_path / "hypernet", tmp_path / "eval.json"
    assert main(["train", *tiny, "--method", "hypernet", "--z-dim", "4", "--h-dim", "4",
                 "--out", str(hyper)]) == 0
    members = ",".join(map(str, maps))
    assert main(["evaluate", str(hyper), "--samples", "1,4", "--bn-batches", "1",
                 "--dee-runs", members, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    curve = result["dee_members"]
    assert curve["runs"] == [str(p) for p in maps] and curve["seeds"] == [0, 1]
    assert len(curve["nll"]) == len(curve["calibrated_nll"]) == len(curve["error"]) == 2
    for n in ("1", "4"):
        expected = deep_ensemble_equivalent(result["samples"][n]["calibrated"]["nll"],
                                            curve["calibrated_nll"])
        assert result["samples"][n]["dee"] == expected and 1 <= expected <= 2
    # a member's own single network is worth exactly one member
    assert main(["evaluate", str(maps[0]), "--samples", "1", "--bn-batches", "1",
                 "--dee-runs", members, "--json", str(out)]) == 0
    mine = json.loads(out.read_text())
    assert mine["samples"]["1"]["calibrated"]["nll"] == pytest.approx(
        mine["dee_members"]["calibrated_nll"][0])
    assert mine["samples"]["1"]["dee"] == 1.0
    # members must be point estimates: one clear line
    capsys.readouterr()
    assert main(["evaluate", str(maps[0]), "--dee-runs", str(hyper)]) == 2
    err = capsys.readouterr().err
    assert "point estimates" in err and err.count("\n") == 1


def test_deep_ensemble_equivalent_interpolates_on_the_member_curve():
    curve = [0.80, 0.70, 0.66, 0.64]
    assert deep_ensemble_equivalent(0.85, curve) == 1.0
    assert deep_ensemble_equivalent(0.75, curve) == pytest.approx(1.5)
    assert deep_ensemble_equivalent(0.65, curve) == pytest.approx(3.5)
    assert deep_ensemble_equivalent(0.50, curve) == 4.0
    with pytest.raises(ValueError, match="at least one"):
        deep_ensemble_equivalent(0.5, [])
