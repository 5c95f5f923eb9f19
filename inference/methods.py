"""Methods behind one interface: each builds a Pyro (model, guide) pair from a network, and names
its training objective (and, for ensembles, its own training procedure)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass

from pyro.nn import PyroModule
from torch import nn

from pyro_implicit import BayesianNetwork, ImplicitGuide, ImplicitMAP, PointGuide
from pyro_implicit.bayes_hypernet import ScaleFlow, WeightNormNetwork
from pyro_implicit.bbb import MeanFieldNormal
from pyro_implicit.dropout import MCDropoutGuide, MCDropoutNetwork
from pyro_implicit.elbo import ELBO
from pyro_implicit.ensemble import EnsembleGuide
from pyro_implicit.models import create_model
from pyro_implicit.objective import DRAW_MODES
from pyro_implicit.priors import check_location_scale

from .config import TrainConfig
from .ensemble import fit_ensemble

MEMBER_METHODS = ("map", "mle")
BBB_SITES = ("residual", "all")
MC_DROPOUT_RATE = 0.3  # mc-dropout's --drop-rate unless given


def _implicit_map(config: TrainConfig, epoch: int) -> ImplicitMAP:
    return ImplicitMAP(config.weight_decay)


def _hypernet_loss(config: TrainConfig, epoch: int) -> ImplicitMAP:
    return ImplicitMAP(config.weight_decay, draws=config.z_draws, mode=config.z_draw_mode)


def z_spread(config: TrainConfig, epoch: int, step: int, steps: int) -> float:
    """The hypernet guide's spread at step ``step`` (0-based) of ``steps`` in epoch ``epoch``:
    0 (one network, at the anchor draw) for the first ``z_hold`` epochs, then opened linearly
    to 1 (p(z) itself) over ``z_warmup`` epochs, step by step."""
    done = epoch * steps + step  # steps taken before this one
    start = config.z_hold * steps
    if done < start:
        return 0.0
    if not config.z_warmup:
        return 1.0
    return min(1.0, (done - start + 1) / (config.z_warmup * steps))


def _mle(config: TrainConfig, epoch: int) -> ImplicitMAP:
    return ImplicitMAP(0.0)


def kl_weight(config: TrainConfig, epoch: int) -> float:
    """The KL's weight in epoch ``epoch`` (0-based): the temperature, ramped up linearly over
    the first ``kl_anneal`` epochs (1/K, 2/K, ..., 1)."""
    ramp = min(1.0, (epoch + 1) / config.kl_anneal) if config.kl_anneal else 1.0
    return config.temperature * ramp


def _elbo(config: TrainConfig, epoch: int) -> ELBO:
    return ELBO(config.weight_decay, kl_weight(config, epoch), config.local_reparam)


@dataclass(frozen=True)
class Method:
    """A posterior approximation: how to build its model and guide, its training objective
    (``loss(config, epoch)``: a Pyro loss offering ``loss_and_logits``), its description, and
    optionally its own training procedure ``fit(config, out, resume, progress, data) -> Run``
    (used instead of the common loop)."""

    build: Callable[[nn.Module, TrainConfig, int], tuple[BayesianNetwork, PyroModule]]
    description: str
    loss: Callable[[TrainConfig, int], object] = _implicit_map
    fit: Callable | None = None


def _hypernet(net, config: TrainConfig, num_data: int):
    model = BayesianNetwork(net, num_data)
    guide = ImplicitGuide(model, config.strategy, config.prior, config.z_dim, config.h_dim,
                          config.z_loc, config.z_scale, anchor_seed=config.seed)
    return model, guide


def _point(net, config: TrainConfig, num_data: int):
    return BayesianNetwork(net, num_data, generated={}), PointGuide()


def weight_groups(net: nn.Module, kernels_only: bool) -> dict[str, list[str]]:
    """``net.residual_blocks()`` plus every other parameter (only matrices and kernels when
    ``kernels_only``), each under its module's name: the sites of "all weights"."""
    groups = {block: list(names) for block, names in net.residual_blocks().items()}
    listed = {name for names in groups.values() for name in names}
    for name, param in net.named_parameters():
        if name not in listed and (param.dim() > 1 or not kernels_only):
            groups.setdefault(name.rpartition(".")[0], []).append(name)
    return groups


def _bbb(net, config: TrainConfig, num_data: int):
    initial = {name: p.detach().clone() for name, p in net.named_parameters()}
    generated = None if config.bbb_sites == "residual" else weight_groups(net, kernels_only=True)
    model = BayesianNetwork(net, num_data, generated)
    return model, MeanFieldNormal(model, initial, config.init_scale)


def _bayes_hypernet(net, config: TrainConfig, num_data: int):
    model = WeightNormNetwork(net, num_data)
    return model, ScaleFlow(model, config.flow_layers, config.flow_hidden, config.init_scale)


def _mc_dropout(net, config: TrainConfig, num_data: int):
    return MCDropoutNetwork(net, num_data), MCDropoutGuide()


def _ensemble(net, config: TrainConfig, num_data: int):
    model = BayesianNetwork(net, num_data, weight_groups(net, kernels_only=False))
    return model, EnsembleGuide(model, config.members)


METHODS: dict[str, Method] = {
    "hypernet": Method(_hypernet, "implicit posterior: hypernetworks generate the residual-block "
                                  "convs from z ~ p(z); MAP on theta (Ukai et al. 2019)",
                       _hypernet_loss),
    "map": Method(_point, "point estimate, weight decay on every parameter"),
    "mle": Method(_point, "point estimate without any weight decay", _mle),
    "ensemble": Method(_ensemble, "--members independently initialised and shuffled map (or "
                                  "--member-method mle) nets, equally weighted",
                       fit=fit_ensemble),
    "bbb": Method(_bbb, "Bayes by Backprop: factorised Gaussian q(w) on the residual-block convs "
                        "(--bbb-sites all: every weight), ELBO with analytic KL "
                        "(Blundell et al. 2015)", _elbo),
    "bayes-hypernet": Method(_bayes_hypernet, "Bayesian hypernetwork: weight-normalised convs, a "
                                              "real-NVP flow over their scales, ELBO "
                                              "(Krueger et al. 2017)", _elbo),
    "mc-dropout": Method(_mc_dropout, "WideResNet dropout kept on at test time, N passes "
                                      "averaged (Gal & Ghahramani 2016)"),
}


def check_method(name: str) -> str:
    """Return ``name`` if it names a method, else raise a ValueError listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def check_method_options(config: TrainConfig) -> None:
    """Raise a ValueError naming the first bad method or method knob of ``config``."""
    check_method(config.method)
    for name in ("members", "flow_layers", "flow_hidden", "z_draws"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(config.kl_anneal, int) or config.kl_anneal < 0:
        raise ValueError(f"kl_anneal must be a number of epochs >= 0, got {config.kl_anneal!r}")
    for name in ("z_hold", "z_warmup"):
        value = getattr(config, name)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a number of epochs >= 0, got {value!r}")
    if config.z_hold + config.z_warmup >= config.epochs and (config.z_hold or config.z_warmup):
        raise ValueError(f"z_hold + z_warmup ({config.z_hold} + {config.z_warmup}) must leave "
                         f"epochs at full spread: fewer than epochs ({config.epochs})")
    check_location_scale(config.z_loc, config.z_scale)
    if config.z_draw_mode not in DRAW_MODES:
        raise ValueError(f"unknown z draw mode {config.z_draw_mode!r}; choose one of: "
                         f"{', '.join(DRAW_MODES)}")
    for name in ("init_scale", "temperature", "theta_lr_scale"):
        value = getattr(config, name)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if config.member_method not in MEMBER_METHODS:
        raise ValueError(f"unknown member method {config.member_method!r}; choose one of: "
                         f"{', '.join(MEMBER_METHODS)}")
    if config.bbb_sites not in BBB_SITES:
        raise ValueError(f"unknown bbb sites {config.bbb_sites!r}; choose one of: "
                         f"{', '.join(BBB_SITES)}")
    if config.method == "ensemble" and config.sync_bn:
        raise ValueError("ensemble does not take --sync-bn (its weight-site shell has no "
                         "BatchNorm parameters to synchronise); train the members as runs")
    if config.method == "mc-dropout" and not config.drop_rate > 0:
        raise ValueError(f"mc-dropout needs a drop rate > 0, got {config.drop_rate} "
                         f"(its default is {MC_DROPOUT_RATE})")


def build(config: TrainConfig, num_classes: int, in_channels: int, num_data: int):
    """The (model, guide) pair of ``config``: a fresh network wrapped by its method."""
    net = create_model(config.model, num_classes=num_classes, in_channels=in_channels,
                       drop_rate=config.drop_rate)
    return METHODS[check_method(config.method)].build(net, config, num_data)


def add_method_args(p: argparse.ArgumentParser) -> None:
    """The method knobs of ``pyro-implicit train``."""
    d = TrainConfig()
    p.add_argument("--members", type=int, default=d.members, metavar="M",
                   help=f"ensemble: number of members (default {d.members})")
    p.add_argument("--member-method", default=d.member_method,
                   help=f"ensemble: what each member is: {', '.join(MEMBER_METHODS)}")
    p.add_argument("--bbb-sites", default=d.bbb_sites,
                   help="bbb: Gaussian weights on the residual-block convs (residual, as the "
                        "hypernetwork) or on every conv and linear weight (all)")
    p.add_argument("--init-scale", type=float, default=d.init_scale, metavar="S",
                   help="bbb, bayes-hypernet: initial std of q (bbb: of each weight; "
                        f"bayes-hypernet: of each weight-norm scale; default {d.init_scale})")
    p.add_argument("--local-reparam", action="store_true",
                   help="bbb: local reparameterisation of conv/linear pre-activations")
    p.add_argument("--kl-anneal", type=int, default=d.kl_anneal, metavar="EPOCHS",
                   help="bbb, bayes-hypernet: ramp the KL weight up linearly over EPOCHS epochs")
    p.add_argument("--temperature", type=float, default=d.temperature, metavar="T",
                   help="bbb, bayes-hypernet: posterior temperature (the KL's weight; 1 = ELBO)")
    p.add_argument("--flow-layers", type=int, default=d.flow_layers, metavar="K",
                   help=f"bayes-hypernet: affine coupling layers (default {d.flow_layers})")
    p.add_argument("--z-loc", type=float, default=d.z_loc, metavar="MU",
                   help="hypernet: p(z) moved to MU + S * e, e from --prior (default 0)")
    p.add_argument("--z-scale", type=float, default=d.z_scale, metavar="S",
                   help="hypernet: see --z-loc (default 1); only S / MU matters to the "
                        "generated nets, which BatchNorm makes scale-free")
    p.add_argument("--z-draws", type=int, default=d.z_draws, metavar="K",
                   help="hypernet: z draws per step (default 1, the paper's)")
    p.add_argument("--z-draw-mode", default=d.z_draw_mode,
                   help="hypernet, --z-draws K: groups (the batch split into K groups, one "
                        "draw each: the same FLOPs) or mixture (the whole batch through every "
                        "draw, loss -log of the mean likelihood: K times the FLOPs)")
    p.add_argument("--z-hold", type=int, default=d.z_hold, metavar="EPOCHS",
                   help="hypernet: train one network (every z at a fixed anchor draw) for "
                        "EPOCHS epochs before p(z) opens")
    p.add_argument("--z-warmup", type=int, default=d.z_warmup, metavar="EPOCHS",
                   help="hypernet: open p(z) linearly from the anchor over EPOCHS epochs "
                        "(after --z-hold)")
    p.add_argument("--theta-lr-scale", type=float, default=d.theta_lr_scale, metavar="F",
                   help="hypernet: the hypernetworks' output layers learn at F x --lr (an "
                        "SGD step on them moves w by lr |r|^2, about 16 lr at the paper's "
                        "init with N(0,1))")
    p.add_argument("--flow-hidden", type=int, default=d.flow_hidden, metavar="H",
                   help=f"bayes-hypernet: hidden units of each coupling net "
                        f"(default {d.flow_hidden})")


def method_options(args: argparse.Namespace) -> dict:
    """The method knobs parsed by :func:`add_method_args`, and the drop rate (``None``: the
    method's default, 0.3 for mc-dropout and 0 otherwise)."""
    drop_rate = args.drop_rate
    if drop_rate is None:
        drop_rate = MC_DROPOUT_RATE if args.method == "mc-dropout" else 0.0
    return dict(drop_rate=drop_rate, members=args.members, member_method=args.member_method,
                bbb_sites=args.bbb_sites, init_scale=args.init_scale,
                local_reparam=args.local_reparam, kl_anneal=args.kl_anneal,
                temperature=args.temperature, flow_layers=args.flow_layers,
                flow_hidden=args.flow_hidden, z_loc=args.z_loc, z_scale=args.z_scale,
                z_draws=args.z_draws, z_draw_mode=args.z_draw_mode, z_hold=args.z_hold,
                z_warmup=args.z_warmup, theta_lr_scale=args.theta_lr_scale)
