"""Posterior analysis with ArviZ: weight correlations, diversity, calibration.

Works on any :class:`~pyro_implicit.BayesianNetwork` and guide: an implicit (hypernetwork)
posterior gives as many draws as asked, a point estimate one draw, and an ensemble of
independently trained networks one draw per member. ``pyro_implicit.inference.analyze`` builds
all of it from run folders (``pyro-implicit analyze RUN --out DIR``);
:func:`posterior_inference_data` from a model and guide in memory, in one call.

InferenceData layout (:func:`to_inference_data`; every group has one chain, ``chain = [0]``):

=====================  ====================================  ==================================
group                  variable (dims)                       meaning
=====================  ====================================  ==================================
posterior              ``w`` (chain, draw, weight)           chosen scalar weights per draw
posterior              ``z`` (chain, draw, z_group, z_dim)   the latent z of each draw
                                                             (hypernetwork runs only)
posterior_predictive   ``probs`` (chain, draw, test_point,   class probabilities of each draw,
                       class)                                BN recalibrated per draw
log_likelihood         ``y`` (chain, draw, test_point)       log p(y_i | x_i, w_draw)
observed_data          ``y`` (test_point)                    true labels (int)
uncertainty            ``predictive_entropy``,               per test point, over the draws:
                       ``expected_entropy``,                 total, aleatoric and epistemic
                       ``mutual_information`` (test_point)   uncertainty (nats)
constant_data          ``pairs`` (pair, end)                 random weight pairs: indices into
                                                             ``weight``; coord ``kind`` (pair)
                                                             is "within" or "across"
=====================  ====================================  ==================================

Coordinates: ``weight`` = labels ``site[i,j,k,l]`` (e.g. ``stage1.0.conv1.weight[3,1,0,2]``)
with non-index coords ``site`` and ``block`` (residual block) along it; ``z_group`` = the
strategy's z groups (``all``, block names, or layer names); ``test_point`` = indices into the
test set; ``class`` = class names. Draw d of ``posterior_predictive``/``log_likelihood`` is draw
d of ``posterior`` (same z); the posterior may hold more draws (correlations want ~1000, model
averaging ~16). Run metadata is in each group's ``attrs``.
"""

from .calibration import averaging_curve, averaging_sizes, reliability
from .diversity import disagreement, disagreement_matrix, fault_table, predictions
from .export import (
    DRAWS,
    draw_probs,
    observed_labels,
    pair_correlations,
    posterior_inference_data,
    selective_curves,
    stacked,
    to_inference_data,
    uncertainty_summary,
    weight_correlations,
    weight_pairs,
)
from .plots import plot_averaging, plot_reliability, plot_weight_pairs
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

__all__ = [
    "DRAWS",
    "PAIR_KINDS",
    "WeightLayout",
    "WeightRef",
    "WeightSelection",
    "abs_correlations",
    "averaging_curve",
    "averaging_sizes",
    "disagreement",
    "disagreement_matrix",
    "draw_probs",
    "draw_weights",
    "fault_table",
    "independent_level",
    "mean_abs_correlation",
    "observed_labels",
    "pair_correlations",
    "plot_averaging",
    "plot_reliability",
    "plot_weight_pairs",
    "posterior_inference_data",
    "predictions",
    "reliability",
    "select_weights",
    "selective_curves",
    "stacked",
    "to_inference_data",
    "uncertainty_summary",
    "weight_correlations",
    "weight_pairs",
]
