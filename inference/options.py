"""Each method's knobs, declared once: a dataclass per group of knobs, whose fields carry their
flag's help. :class:`~.config.TrainConfig` inherits every group (``config.json`` stays flat),
``pyro-implicit train`` derives its flags from them (:func:`add_option_flags`), and each group
checks its own values (``check``)."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyro_implicit.hypernet import GENERATORS, check_generator
from pyro_implicit.objective import DRAW_MODES
from pyro_implicit.priors import PRIOR_DESCRIPTIONS, check_location_scale, check_prior
from pyro_implicit.strategies import STRATEGIES, check_strategy

MEMBER_METHODS = ("map", "mle")
BBB_SITES = ("residual", "all")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def knob(default: Any, help: str, metavar: str | None = None, type: Any = None,
         flag: str | None = None) -> Any:
    """A dataclass field that is also a ``train`` flag (``flag``, else ``--name-with-dashes``)."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "type": type,
                                            "flag": flag})


def _positive(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _epochs(config: Any, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number of epochs >= 0, got {value!r}")


def _finite(config: Any, *names: str, positive: bool = True) -> None:
    """Each named value a finite number, > 0 (``positive``) or >= 0."""
    for name in names:
        value = getattr(config, name)
        if (not isinstance(value, (int, float)) or isinstance(value, bool)
                or not math.isfinite(value) or value < 0 or (positive and value == 0)):
            raise ValueError(f"{name} must be a finite number {'>' if positive else '>='} 0, "
                             f"got {value!r}")


def _choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


@dataclass
class HypernetOptions:
    """The implicit posterior: hypernetworks, p(z), and how z is drawn while training."""

    strategy: str = knob("all-in-one", f"z sharing: {', '.join(STRATEGIES)}")
    # the best found on c10-10k (docs/results.md); the paper's recipes pin their own
    prior: str = knob("uniform01", "p(z): " + ", ".join(
        f"{name} {law}" for name, law in PRIOR_DESCRIPTIONS.items())
        + " (default uniform01, the best found on c10-10k; the paper's WRN-28-4 runs: normal)")
    z_dim: int = knob(16, "z's dimension per group (the paper: 16 or 32)", type=positive_int)
    h_dim: int = knob(16, "hidden units of each hypernetwork", type=positive_int)
    generator: str = knob("full", "how g(z) makes a kernel: " + ", ".join(GENERATORS)
                          + " (full: the paper's, the output layer emits every weight; rank1: "
                            "a shared kernel times per-channel factors of z, as BatchEnsemble)")
    z_loc: float = knob(0.0, "p(z) moved to MU + S * e, e from --prior (default 0)", "MU")
    z_scale: float = knob(1.0, "see --z-loc (default 1); only S / MU matters to the generated "
                               "nets, which BatchNorm makes scale-free", "S")
    z_draws: int = knob(4, "z draws per step (default 4, the best found on c10-10k; the "
                           "paper's: 1)", "K")
    z_draw_mode: str = knob("groups", "with --z-draws K: groups (the batch split into K groups, "
                                      "one draw each: the same FLOPs) or mixture (the whole "
                                      "batch through every draw, loss -log of the mean "
                                      "likelihood: K times the FLOPs)")
    z_hold: int = knob(0, "train one network (every z at a fixed anchor draw) for EPOCHS "
                          "epochs before p(z) opens", "EPOCHS")
    z_warmup: int = knob(0, "open p(z) linearly from the anchor over EPOCHS epochs (after "
                            "--z-hold)", "EPOCHS")
    theta_lr_scale: float = knob(1.0, "the hypernetworks' output layers learn at F x --lr (an "
                                      "SGD step on them moves w by lr |r|^2, about 16 lr at the "
                                      "paper's init with N(0,1))", "F")
    repulsion: float = knob(0.0, "add BETA x cos^2 between the step's generated kernels and "
                                 "those of a fresh z, per layer (default 0, the paper's; "
                                 "the epoch's loss then includes it)", "BETA")

    def check(self) -> None:
        check_strategy(self.strategy)
        check_prior(self.prior)
        _positive(self, "z_dim", "h_dim", "z_draws")
        _epochs(self, "z_hold", "z_warmup")
        check_location_scale(self.z_loc, self.z_scale)
        _choice(self.z_draw_mode, DRAW_MODES, "z draw mode")
        _finite(self, "theta_lr_scale")
        check_generator(self.generator)
        if self.generator != "full" and self.theta_lr_scale != 1:
            raise ValueError(f"theta_lr_scale scales the full generator's output layers; "
                             f"generator {self.generator!r} has none, got "
                             f"theta_lr_scale={self.theta_lr_scale!r}")
        _finite(self, "repulsion", positive=False)


@dataclass
class EnsembleOptions:
    """Independently trained members, averaged."""

    members: int = knob(4, "number of members (default 4)", "M")
    member_method: str = knob("map", f"what each member is: {', '.join(MEMBER_METHODS)}")

    def check(self) -> None:
        _positive(self, "members")
        _choice(self.member_method, MEMBER_METHODS, "member method")


@dataclass
class BBBOptions:
    """Bayes by Backprop's weight sites and estimator."""

    bbb_sites: str = knob("residual", "Gaussian weights on the residual-block convs (residual, "
                                      "as the hypernetwork) or on every conv and linear weight "
                                      "(all)")
    local_reparam: bool = knob(False, "local reparameterisation of conv/linear pre-activations")

    def check(self) -> None:
        _choice(self.bbb_sites, BBB_SITES, "bbb sites")


@dataclass
class ELBOOptions:
    """The variational baselines' q initialisation and KL weighting."""

    init_scale: float = knob(0.01, "initial std of q (bbb: of each weight; bayes-hypernet: of "
                                   "each weight-norm scale; default 0.01)", "S")
    kl_anneal: int = knob(0, "ramp the KL weight up linearly over EPOCHS epochs", "EPOCHS")
    temperature: float = knob(1.0, "posterior temperature (the KL's weight; 1 = ELBO)", "T")

    def check(self) -> None:
        _epochs(self, "kl_anneal")
        _finite(self, "init_scale", "temperature")


@dataclass
class FlowOptions:
    """The Bayesian hypernetwork's real-NVP flow."""

    flow_layers: int = knob(4, "affine coupling layers (default 4)", "K")
    flow_hidden: int = knob(64, "hidden units of each coupling net (default 64)", "H")
    flow_scale_bound: float = knob(2.0, "each coupling's log-scale is B tanh(s / B) (default 2; "
                                        "0: Pyro's clamp to [-5, 3], which diverges on c10-10k)",
                                   "B")
    flow_grad_norm: float = knob(10.0, "the flow's gradients are scaled to this total norm at "
                                       "most, every step (Krueger et al.'s 10; 0: off)", "G")

    def check(self) -> None:
        _positive(self, "flow_layers", "flow_hidden")
        if not 0 <= self.flow_scale_bound <= 3:
            raise ValueError(f"flow_scale_bound must be in [0, 3] (0: Pyro's clamp), got "
                             f"{self.flow_scale_bound}")
        if not self.flow_grad_norm >= 0:
            raise ValueError(f"flow_grad_norm must be >= 0 (0: off), got {self.flow_grad_norm}")


@dataclass
class SWAGOptions:
    """SWA-Gaussian: the SGD iterates' moments, collected at a constant lr late in training."""

    swag_rank: int = knob(20, "K: deviations kept for the low-rank covariance (default 20)", "K")
    swag_start: float = knob(0.5, "collection starts after this fraction of the epochs; from "
                                  "then on the lr is --swag-lr (default 0.5)", "F")
    swag_lr: float = knob(0.01, "the constant lr while collecting (default 0.01)", "LR")
    swag_every: int = knob(0, "collect every K steps (default 0: once per epoch, at its end)",
                           "K", non_negative_int)

    def check(self) -> None:
        _positive(self, "swag_rank")
        _finite(self, "swag_lr")
        if not 0 <= self.swag_start < 1:
            raise ValueError(f"swag_start must be a fraction of the epochs in [0, 1), got "
                             f"{self.swag_start!r}")
        if not isinstance(self.swag_every, int) or self.swag_every < 0:
            raise ValueError(f"swag_every must be an integer >= 0, got {self.swag_every!r}")


@dataclass
class LaplaceOptions:
    """Post-hoc methods: the finished run they are fitted to, without retraining."""

    from_run: str | None = knob(None, "the finished map run to fit to (train --method laplace "
                                      "--from RUN --out NEW)", "RUN", str, flag="--from")

    def check(self) -> None:
        if self.from_run == "":
            raise ValueError("from_run must name a run folder, got ''")


OPTION_GROUPS: tuple[type, ...] = (HypernetOptions, EnsembleOptions, BBBOptions, ELBOOptions,
                                   FlowOptions, SWAGOptions, LaplaceOptions)


def add_option_flags(parser: argparse.ArgumentParser, readers: Mapping[type, str]) -> None:
    """One flag per knob of every group, in an argument group titled after the methods that
    read it (``readers``: group -> their names)."""
    for group in OPTION_GROUPS:
        section = parser.add_argument_group(f"{readers[group]} options", group.__doc__)
        for f in dataclasses.fields(group):
            meta = f.metadata
            flag = meta["flag"] or "--" + f.name.replace("_", "-")
            if isinstance(f.default, bool):
                section.add_argument(flag, dest=f.name, action="store_true", help=meta["help"])
                continue
            section.add_argument(flag, dest=f.name, type=meta["type"] or type(f.default),
                                 default=f.default, metavar=meta["metavar"], help=meta["help"])


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """Every knob's parsed value, by field name."""
    return {f.name: getattr(args, f.name) for group in OPTION_GROUPS
            for f in dataclasses.fields(group)}
