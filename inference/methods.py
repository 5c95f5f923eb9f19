"""Methods behind one interface: each builds a Pyro (model, guide) pair from a network, names
its training objective, the knob groups it reads, and whether it trains as member runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyro.nn import PyroModule
from torch import nn
from torch.utils.data import DataLoader

from pyro_implicit import BayesianNetwork, ImplicitGuide, ImplicitMAP, PointGuide
from pyro_implicit.bayes_hypernet import ScaleFlow, WeightNormNetwork
from pyro_implicit.bbb import MeanFieldNormal
from pyro_implicit.dropout import MCDropoutGuide, MCDropoutNetwork
from pyro_implicit.elbo import WeightSpaceELBO
from pyro_implicit.ensemble import EnsembleGuide
from pyro_implicit.laplace import LastLayerLaplace, last_linear
from pyro_implicit.models import create_model
from pyro_implicit.swag import SWAGGuide

from .options import (
    BBBOptions,
    ELBOOptions,
    EnsembleOptions,
    FlowOptions,
    HypernetOptions,
    LaplaceOptions,
    SWAGOptions,
)

if TYPE_CHECKING:
    from .config import TrainConfig

MC_DROPOUT_RATE = 0.3  # mc-dropout's --drop-rate unless given


def _implicit_map(config: TrainConfig, epoch: int) -> ImplicitMAP:
    return ImplicitMAP(config.weight_decay, bn_groups=config.bn_groups)


def _hypernet_loss(config: TrainConfig, epoch: int) -> ImplicitMAP:
    return ImplicitMAP(config.weight_decay, draws=config.z_draws, mode=config.z_draw_mode,
                       repulsion=config.repulsion, bn_groups=config.bn_groups)


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
    return ImplicitMAP(0.0, bn_groups=config.bn_groups)


def kl_weight(config: TrainConfig, epoch: int) -> float:
    """The KL's weight in epoch ``epoch`` (0-based): the temperature, ramped up linearly over
    the first ``kl_anneal`` epochs (1/K, 2/K, ..., 1)."""
    ramp = min(1.0, (epoch + 1) / config.kl_anneal) if config.kl_anneal else 1.0
    return config.temperature * ramp


def _elbo(config: TrainConfig, epoch: int) -> WeightSpaceELBO:
    return WeightSpaceELBO(config.weight_decay, kl_weight(config, epoch), config.local_reparam)


def _no_sync_bn(config: TrainConfig) -> None:
    if config.sync_bn:
        raise ValueError("ensemble does not take --sync-bn (its weight-site shell has no "
                         "BatchNorm parameters to synchronise); train the members as runs")


def _needs_dropout(config: TrainConfig) -> None:
    if not config.drop_rate > 0:
        raise ValueError(f"mc-dropout needs a drop rate > 0, got {config.drop_rate} "
                         f"(its default is {MC_DROPOUT_RATE})")


@dataclass(frozen=True)
class PostHoc:
    """A method fitted to a finished run of method ``source`` instead of trained:
    ``fit(net, model, guide, batches)`` fills the new run's model and guide from the source's
    trained network ``net`` and its training set as normalised, unaugmented (x, y) batches."""

    source: str
    fit: Callable[[nn.Module, BayesianNetwork, PyroModule, DataLoader], None]


@dataclass(frozen=True)
class Method:
    """A posterior approximation: how to build its model and guide, its training objective
    (``loss(config, epoch)``: a Pyro loss offering ``loss_and_logits``), its description, the
    knob groups it reads (:mod:`.options`), its own defaults for shared knobs, an extra
    ``check(config)``, whether it trains as independent member runs (an ensemble), its own
    ``lr(config, epoch)`` (else the config's step schedule), ``after_step(config, guide, epoch,
    step, steps)`` run after every training step, ``clip(config, guide)``: the parameters whose
    gradients are scaled to a total norm at most (and that norm) before every update, and
    ``post_hoc`` for a method fitted to a finished run rather than trained."""

    build: Callable[[nn.Module, TrainConfig, int], tuple[BayesianNetwork, PyroModule]]
    description: str
    loss: Callable[[TrainConfig, int], object] = _implicit_map
    options: tuple[type, ...] = ()
    defaults: Mapping[str, object] = field(default_factory=dict)
    check: Callable[[TrainConfig], None] | None = None
    trains_members: bool = False
    lr: Callable[[TrainConfig, int], float] | None = None
    after_step: Callable[[TrainConfig, PyroModule, int, int, int], None] | None = None
    clip: Callable[[TrainConfig, PyroModule], tuple[list, float] | None] | None = None
    post_hoc: PostHoc | None = None


def _hypernet(net, config: TrainConfig, num_data: int):
    model = BayesianNetwork(net, num_data)
    guide = ImplicitGuide(model, config.strategy, config.prior, config.z_dim, config.h_dim,
                          config.z_loc, config.z_scale, anchor_seed=config.seed,
                          generator=config.generator)
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
    return model, ScaleFlow(model, config.flow_layers, config.flow_hidden, config.init_scale,
                            config.flow_scale_bound)


def _flow_clip(config: TrainConfig, guide: ScaleFlow) -> tuple[list, float] | None:
    return (list(guide.parameters()), config.flow_grad_norm) if config.flow_grad_norm else None


def _mc_dropout(net, config: TrainConfig, num_data: int):
    return MCDropoutNetwork(net, num_data), MCDropoutGuide()


def _ensemble(net, config: TrainConfig, num_data: int):
    model = BayesianNetwork(net, num_data, weight_groups(net, kernels_only=False))
    return model, EnsembleGuide(model, config.members)


def _swag(net, config: TrainConfig, num_data: int):
    initial = {name: p.detach().clone() for name, p in net.named_parameters()}
    model = BayesianNetwork(net, num_data, weight_groups(net, kernels_only=False))
    return model, SWAGGuide(model, config.swag_rank, initial)


def swag_start(config: TrainConfig) -> int:
    """The first epoch (0-based) of SWAG's constant lr and collection."""
    return int(config.swag_start * config.epochs)


def _swag_lr(config: TrainConfig, epoch: int) -> float:
    return config.swag_lr if epoch >= swag_start(config) else config.lr_at(epoch)


def _swag_collect(config: TrainConfig, guide: SWAGGuide, epoch: int, step: int,
                  steps: int) -> None:
    """Collect after the last step of every epoch from swag_start on (``swag_every`` 0), or
    after every ``swag_every``-th step counted from there."""
    done = (epoch - swag_start(config)) * steps + step + 1  # steps since collection began
    if done > 0 and (done % config.swag_every == 0 if config.swag_every else step == steps - 1):
        guide.collect()


def _laplace(net, config: TrainConfig, num_data: int):
    layer = last_linear(net)
    params = dict(net.get_submodule(layer).named_parameters(prefix=layer))
    initial = {name: p.detach().clone() for name, p in params.items()}
    model = BayesianNetwork(net, num_data, {layer: list(params)})
    return model, LastLayerLaplace(model, initial)


def _fit_laplace(net: nn.Module, model: BayesianNetwork, guide: LastLayerLaplace,
                 batches: DataLoader) -> None:
    """The MAP network ``net`` in ``model``, its last layer's Laplace fitted on ``batches``."""
    sites = {s.name for s in model.sites}
    model.net.load_state_dict({k: v for k, v in net.state_dict().items() if k not in sites})
    guide.fit(net, batches)


METHODS: dict[str, Method] = {
    "hypernet": Method(_hypernet, "implicit posterior: hypernetworks generate the residual-block "
                                  "convs from z ~ p(z); MAP on theta (Ukai et al. 2019)",
                       _hypernet_loss, (HypernetOptions,)),
    "map": Method(_point, "point estimate, weight decay on every parameter"),
    "mle": Method(_point, "point estimate without any weight decay", _mle),
    "ensemble": Method(_ensemble, "--members independently initialised and shuffled map (or "
                                  "--member-method mle) nets, equally weighted",
                       options=(EnsembleOptions,), check=_no_sync_bn, trains_members=True),
    "bbb": Method(_bbb, "Bayes by Backprop: factorised Gaussian q(w) on the residual-block convs "
                        "(--bbb-sites all: every weight), ELBO with analytic KL "
                        "(Blundell et al. 2015)", _elbo, (BBBOptions, ELBOOptions)),
    "bayes-hypernet": Method(_bayes_hypernet, "Bayesian hypernetwork: weight-normalised convs, a "
                                              "real-NVP flow over their scales, ELBO "
                                              "(Krueger et al. 2017)", _elbo,
                             (ELBOOptions, FlowOptions), clip=_flow_clip),
    "mc-dropout": Method(_mc_dropout, "WideResNet dropout kept on at test time, N passes "
                                      "averaged (Gal & Ghahramani 2016)",
                         defaults={"drop_rate": MC_DROPOUT_RATE}, check=_needs_dropout),
    "swag": Method(_swag, "SWA-Gaussian: diagonal plus rank --swag-rank Gaussian from the SGD "
                          "iterates at constant --swag-lr after --swag-start (Maddox et al. "
                          "2019)", options=(SWAGOptions,), lr=_swag_lr, after_step=_swag_collect),
    "laplace": Method(_laplace, "post hoc on a finished map run (--from RUN): last-layer "
                                "Laplace, KFAC GGN, prior precision by marginal likelihood "
                                "(Daxberger et al. 2021)", options=(LaplaceOptions,),
                      post_hoc=PostHoc("map", _fit_laplace)),
}


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The lr of epoch ``epoch``: the method's own schedule, else the config's."""
    method = METHODS[config.method]
    return method.lr(config, epoch) if method.lr else config.lr_at(epoch)


def check_method(name: str) -> str:
    """Return ``name`` if it names a method, else raise a ValueError listing the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return name


def _check_bn_groups(config: TrainConfig, method: Method) -> None:
    """``bn_groups`` > 1 splits the batch of the MAP objective (:class:`ImplicitMAP`, which
    checks it against the z draws); the other methods do not read it."""
    loss = None if method.post_hoc else method.loss(config, 0)
    if not isinstance(loss, ImplicitMAP):
        plain = dataclasses.replace(config, bn_groups=1)
        readers = ", ".join(name for name, m in METHODS.items()
                            if not m.post_hoc and isinstance(m.loss(plain, 0), ImplicitMAP))
        raise ValueError(f"bn_groups {config.bn_groups}: {config.method} does not train by "
                         f"the MAP objective whose batch it splits; it is read by {readers}")


def validate(config: TrainConfig) -> TrainConfig:
    """``config`` checked whole: its method's name, its knobs (:meth:`TrainConfig.check`), then
    what the method asks of them; a ValueError names the first bad value and the choices."""
    check_method(config.method)
    return check_against_method(config.check())


def check_against_method(config: TrainConfig) -> TrainConfig:
    """What ``config``'s method asks of its knobs, once :meth:`TrainConfig.check` has passed
    (as :meth:`TrainConfig.load` runs it): the rest of :func:`validate`."""
    method = METHODS[check_method(config.method)]
    if config.bn_groups > 1:
        _check_bn_groups(config, method)
    if method.check is not None:
        method.check(config)
    if config.from_run is not None and method.post_hoc is None:
        post_hoc = ", ".join(name for name, m in METHODS.items() if m.post_hoc)
        raise ValueError(f"--from RUN is for the methods fitted post hoc ({post_hoc}); "
                         f"{config.method} trains from scratch: drop --from")
    return config


def build(config: TrainConfig, num_classes: int, in_channels: int, num_data: int):
    """The (model, guide) pair of ``config``: a fresh network wrapped by its method. A drop rate
    is passed only when set, so a network registered without one builds as it is."""
    dropout = {"drop_rate": config.drop_rate} if config.drop_rate else {}
    net = create_model(config.model, num_classes=num_classes, in_channels=in_channels, **dropout)
    return METHODS[check_method(config.method)].build(net, config, num_data)
