"""Uncertainty of a Bayesian model average: entropy decomposition, selective prediction,
out-of-distribution detection scores, temperature scaling, and its worth in ensemble members.

``draws`` are per-draw class probabilities of shape (N, n, C); the model average is their mean
over N. Predictive entropy H[E p] = expected entropy E H[p] (aleatoric) + mutual information
(epistemic). Uncertainty scores are oriented so that larger means more uncertain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

EPS = 1e-12  # probabilities are clamped here before a log, as in :func:`pyro_implicit.metrics.nll`
SCORES = ("max_prob", "entropy", "mutual_information")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last axis, with 0 log 0 = 0."""
    p = probs.double()
    return -torch.special.xlogy(p, p).sum(-1)


def predictive_entropy(draws: torch.Tensor) -> torch.Tensor:
    """Per point: the entropy of the model average, H[(1/N) sum_n p_n], shape (n,)."""
    return entropy(draws.mean(0))


def expected_entropy(draws: torch.Tensor) -> torch.Tensor:
    """Per point: the mean entropy of the draws, (1/N) sum_n H[p_n] (aleatoric), shape (n,)."""
    return entropy(draws).mean(0)


def mutual_information(draws: torch.Tensor) -> torch.Tensor:
    """Per point: predictive minus expected entropy (epistemic), >= 0, zero when the draws agree."""
    return (predictive_entropy(draws) - expected_entropy(draws)).clamp_min(0)


def uncertainty_scores(probs: torch.Tensor,
                       draws: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """Per-point scores of the averaged ``probs`` (n, C): ``max_prob`` (1 - max probability),
    ``entropy`` (predictive) and ``mutual_information`` (None without the ``draws``)."""
    return {
        "max_prob": 1 - probs.double().max(-1).values,
        "entropy": entropy(probs),
        "mutual_information": None if draws is None else mutual_information(draws),
    }


def _tie_groups(sorted_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For sorted values: each item's group index and the item count of each group of ties."""
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True,
                                                  return_counts=True)
    return inverse, counts


def selective_curve(uncertainty: torch.Tensor,
                    errors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Risk-coverage curve: keeping the k most certain points (k = 1..n), the fraction kept
    and the error rate among them. Tied scores get the expected risk of a random order."""
    order = uncertainty.double().argsort(stable=True)
    scores, err = uncertainty.double()[order], errors.double()[order]
    group, counts = _tie_groups(scores)
    group_errors = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, group, err)
    ends = counts.cumsum(0)
    starts, errors_before = ends - counts, group_errors.cumsum(0) - group_errors
    k = torch.arange(1, len(err) + 1, dtype=torch.float64)
    kept_errors = errors_before[group] + (k - starts[group]) * (group_errors / counts)[group]
    return k / len(err), kept_errors / k


def aurc(uncertainty: torch.Tensor, errors: torch.Tensor) -> float:
    """Area under the risk-coverage curve (mean selective risk over k = 1..n); lower is better."""
    return selective_curve(uncertainty, errors)[1].mean().item()


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positive`` labels: the chance
    that a random positive scores above a random negative, ties counting one half."""
    order = scores.double().argsort()
    group, counts = _tie_groups(scores.double()[order])
    ends = counts.cumsum(0).double()
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = (ends - (counts - 1) / 2)[group]  # average 1-based rank of each tie group
    pos = positive.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if not n_pos or not n_neg:
        raise ValueError("auroc needs both positive and negative items")
    return ((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def aupr(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the precision-recall curve of ``positive`` items as average precision,
    sum_k (R_k - R_{k-1}) P_k over the distinct score thresholds (scikit-learn's)."""
    order = scores.double().argsort(descending=True, stable=True)
    pos = positive.double()[order]
    if not pos.sum():
        raise ValueError("aupr needs positive items")
    group, counts = _tie_groups(scores.double()[order])
    last = counts.cumsum(0) - 1  # each threshold keeps the items up to its last tie
    true_pos = pos.cumsum(0)[last]
    precision, recall = true_pos / (last + 1), true_pos / pos.sum()
    return (torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum().item()


def detection_metrics(in_scores: Mapping[str, torch.Tensor | None],
                      out_scores: Mapping[str, torch.Tensor | None]) -> dict[str, dict]:
    """AUROC and AUPR of telling out-of-distribution items (positive) from in-distribution
    ones by each uncertainty score (None where a score is missing)."""
    result: dict[str, dict] = {"auroc": {}, "aupr": {}}
    for name, inside in in_scores.items():
        outside = out_scores[name]
        if inside is None or outside is None:
            result["auroc"][name] = result["aupr"][name] = None
            continue
        scores = torch.cat([inside, outside])
        positive = torch.cat([torch.zeros(len(inside)), torch.ones(len(outside))]).bool()
        result["auroc"][name] = auroc(scores, positive)
        result["aupr"][name] = aupr(scores, positive)
    return result


def _log(probs: torch.Tensor) -> torch.Tensor:
    return probs.double().clamp_min(EPS).log()


def fit_temperature(probs: torch.Tensor, labels: torch.Tensor,
                    bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The temperature T minimising the NLL of softmax(log(probs) / T) on (``probs``,
    ``labels``): a bounded 1-D search over log T."""
    from scipy.optimize import minimize_scalar

    logp = _log(probs)

    def loss(log_t: float) -> float:
        return torch.nn.functional.cross_entropy(logp / float(torch.tensor(log_t).exp()),
                                                 labels).item()

    lo, hi = torch.tensor(bounds, dtype=torch.float64).log().tolist()
    best = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(torch.tensor(best.x).exp())


def temperature_scale(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log(probs) / T): ``probs`` sharpened (T < 1) or softened (T > 1)."""
    return (_log(probs) / temperature).softmax(-1)


def deep_ensemble_equivalent(nll: float, member_curve: Sequence[float]) -> float:
    """The deep-ensemble equivalent of ``nll`` (Ashukha et al. 2020): the number of averaged,
    independently trained members (1..K, interpolated linearly) whose NLL is ``nll``, on the
    decreasing curve ``member_curve[k - 1]`` = NLL of k averaged members; clamped to [1, K]."""
    if not member_curve:
        raise ValueError("the member curve needs the NLL of at least one member")
    if nll >= member_curve[0]:
        return 1.0
    for k in range(1, len(member_curve)):
        if nll >= member_curve[k]:
            return k + (member_curve[k - 1] - nll) / (member_curve[k - 1] - member_curve[k])
    return float(len(member_curve))


def gap_closed(value: float, single: float, ensemble: float) -> float:
    """Where ``value`` lies between one member (``single``: 0) and the ensemble (1), for a
    lower-is-better metric; above 1 beats the ensemble, below 0 is worse than one member."""
    return (single - value) / (single - ensemble)


def plot_selective(curves: Mapping[str, tuple[torch.Tensor, torch.Tensor]], ax=None):
    """Plot risk-coverage curves ``{label: (coverage, risk)}`` (from :func:`selective_curve`)
    on ``ax`` (a new figure when None); returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.5))
    for label, (coverage, risk) in curves.items():
        ax.plot(coverage.numpy(), risk.numpy(), label=f"{label} (AURC {risk.mean():.4f})")
    ax.set_xlabel("fraction kept")
    ax.set_ylabel("error among kept")
    ax.set_xlim(0, 1)
    ax.legend(fontsize="small")
    return ax
