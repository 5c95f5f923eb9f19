"""pyro-implicit: hypernetwork (implicit) posteriors for ResNet-family CNNs in Pyro.

Ukai, Matsubara & Uehara (2019): a hypernetwork g(z; theta) per residual-block conv layer turns
z ~ p(z) into kernels, a sample of an implicit posterior q(w); training is cross-entropy with
one z per mini-batch plus MAP on theta; prediction averages N samples, each with its own
recalibrated BatchNorm statistics.
"""

from .batchnorm import recalibrate_bn
from .bayes_hypernet import ScaleFlow, WeightNormNetwork
from .bbb import MeanFieldNormal
from .dropout import MCDropoutGuide, MCDropoutNetwork
from .elbo import WeightSpaceELBO
from .ensemble import EnsembleGuide
from .guide import ImplicitGuide, PointGuide, PosteriorGuide
from .hypernet import GENERATORS, HyperNetworks, Rank1HyperNetworks
from .laplace import LastLayerLaplace
from .metrics import classification_metrics
from .model import BayesianNetwork, WeightSite
from .objective import ImplicitMAP
from .posterior import (
    FrozenPosterior,
    eval_mode,
    freeze_posterior,
    model_average,
    predict_probs,
    sync_param_store,
)
from .priors import PRIORS, z_prior
from .residual import residual_kernels
from .saving import load, save
from .strategies import STRATEGIES, group_layers
from .swag import SWAGGuide

__version__ = "0.1.0"

__all__ = [
    "GENERATORS",
    "PRIORS",
    "STRATEGIES",
    "BayesianNetwork",
    "EnsembleGuide",
    "FrozenPosterior",
    "HyperNetworks",
    "ImplicitGuide",
    "ImplicitMAP",
    "LastLayerLaplace",
    "MCDropoutGuide",
    "MCDropoutNetwork",
    "MeanFieldNormal",
    "PointGuide",
    "PosteriorGuide",
    "Rank1HyperNetworks",
    "SWAGGuide",
    "ScaleFlow",
    "WeightNormNetwork",
    "WeightSpaceELBO",
    "WeightSite",
    "classification_metrics",
    "eval_mode",
    "freeze_posterior",
    "group_layers",
    "load",
    "model_average",
    "predict_probs",
    "recalibrate_bn",
    "residual_kernels",
    "save",
    "sync_param_store",
    "z_prior",
]
