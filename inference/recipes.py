"""Named recipes: every experiment of the paper, and the CPU-sized reproduction protocol, as a
:class:`~.config.TrainConfig` runnable by name (``pyro-implicit train --recipe NAME``).

A recipe is a source (the table or figure of Ukai et al. 2019 it reproduces), a description
and a set of TrainConfig values; everything else keeps TrainConfig's defaults, which are the
paper's optimiser and schedule (WideResNet's CIFAR recipe: SGD, Nesterov 0.9, batch 128, lr 0.1
x 0.2 at 40/60/80 % of the epochs, weight decay 5e-4). Every hypernet recipe pins all the
hypernetwork's knobs (the paper's: all-in-one, p(z) = N(0, 1), z_dim = h_dim = 16, one z per
step), so train's hypernet defaults (the best found) do not move it. Each ``paper-*`` recipe
then takes the prior, z_dim = h_dim and
strategy of its table in the paper's "settings per experiment": U(0,1) for Tables I and III,
32 for PyramidNet, SVHN and ResNet-50, N(0,1) for the strategies of Fig. 6, U(0,1) for their
correlations (Sec. 5.6).
Recipes are generated from a few settings (network, data, schedule) crossed with hypernetwork
variants and the baselines of each setting (``-map``; ``-ensemble``: 16 MAP networks, as the
paper's ensembles), never copy-pasted.

On the command line a recipe's values come first, then ``--smoke`` (the same recipe scaled down
to a tiny network of the same family on tiny data, to check that it runs), then every flag the
user typed, which overrides both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import TrainConfig
from .methods import validate

IMAGENET_DATA = "imagenet:PATH"  # a placeholder: the user names the folder with --data
PAPER_ENSEMBLE = 16  # the paper's ensembles average 16 members


@dataclass(frozen=True)
class Recipe:
    """A named run configuration: ``overrides`` are TrainConfig fields."""

    name: str
    source: str
    description: str
    overrides: dict

    @property
    def needs_data(self) -> bool:
        """Whether the data path must come from ``--data`` (ImageNet has no default place)."""
        return self.overrides.get("data") == IMAGENET_DATA

    def config(self, **changes) -> TrainConfig:
        """The recipe as a TrainConfig (not validated), with ``changes`` applied last."""
        return dataclasses.replace(TrainConfig(**self.overrides), recipe=self.name, **changes)

    def settings(self) -> str:
        """The recipe's values that differ from TrainConfig's defaults, as one line."""
        default = TrainConfig()
        shown = []
        for key, value in self.overrides.items():
            if getattr(default, key) != value or key in ("model", "method", "data", "epochs"):
                if isinstance(value, list):
                    value = "/".join(f"{v:.3g}" for v in value)
                shown.append(f"{key}={value}")
        return " ".join(shown)


# Settings: network, data and schedule. CIFAR-10 uses TrainConfig's schedule (WideResNet's).
CIFAR10 = {"data": "cifar10"}
# WideResNet's SVHN recipe (Zagoruyko & Komodakis 2016): dropout 0.4, 160 epochs, lr 0.01 x 0.1
# at 50 % and 75 %, no augmentation; they train on train + extra, here the train split (73k).
SVHN = {"data": "svhn", "drop_rate": 0.4, "epochs": 160, "lr": 0.01, "milestones": [0.5, 0.75],
        "gamma": 0.1}
# The paper gives no ImageNet schedule: the standard ResNet-50 one (90 epochs, batch 256,
# lr 0.1 x 0.1 at epochs 30, 60, 80, weight decay 1e-4, random-resized crop 224 + flip).
IMAGENET = {"data": IMAGENET_DATA, "model": "resnet-50", "epochs": 90, "batch_size": 256,
            "lr": 0.1, "milestones": [1 / 3, 2 / 3, 8 / 9], "gamma": 0.1,
            "weight_decay": 1e-4}
# The reproduction's CPU-sized protocol: wrn-16-2 on a class-balanced 10k subset of the shared
# JPEG copy of CIFAR-10, 40 epochs, the paper's optimiser and schedule.
C10_10K = {"data": "imagefolder:../shared/data/cifar10", "train_subset": 10000,
           "model": "wrn-16-2", "epochs": 40, "batch_size": 128, "seed": 0}

# The paper's hypernetwork, every knob pinned (so that train's defaults may move on): one z
# of the prior per mini-batch, no schedule, one learning rate
HYPERNET = {"method": "hypernet", "strategy": "all-in-one", "prior": "normal", "z_dim": 16,
            "h_dim": 16, "z_loc": 0.0, "z_scale": 1.0, "z_draws": 1, "z_draw_mode": "groups",
            "z_hold": 0, "z_warmup": 0, "theta_lr_scale": 1.0, "repulsion": 0.0,
            "generator": "full"}
# The best hypernetwork the c10-10k screening found (docs/results.md, "Accurate and diverse at
# once"): the paper's CIFAR choice, all-in-one U(0,1) (Table I), with 4 z per step (the batch
# in 4 groups, one draw each), ahead of U(0,1) alone in x1 error and x16 NLL on the validation
# split at 1.1x its step. It is train's default.
BEST_HYPERNET = {**HYPERNET, "prior": "uniform01", "z_draws": 4}
PRIOR_NAMES = {"normal": "N(0,1)", "uniform": "U(-1,1)", "uniform01": "U(0,1)",
               "halfnormal": "|N(0,1)|"}


def hypernet_label(config: TrainConfig) -> str:
    """How tables name a hypernet's p(z), draws per step, BatchNorm groups and generator, e.g.
    "U(0,1), 4 z per step"."""
    label = PRIOR_NAMES.get(config.prior, config.prior)
    if config.z_draws > 1:
        mixture = " (mixture)" if config.z_draw_mode == "mixture" else ""
        label += f", {config.z_draws} z per step{mixture}"
    if config.bn_groups > 1:
        label += f", {config.bn_groups} BatchNorm groups"
    if config.generator != "full":
        label += f", {config.generator} generator"
    return label

# (base name, source, setting, {suffix: (source, description, hypernet changes)}, baselines)
# Baselines: suffix -> (source, description, changes); each becomes "<base>-<suffix>".
_MAP = ("MAP baseline", "the plain network, weight decay on every parameter (MAP)",
        {"method": "map"})
_ENSEMBLE = ("MAP-ensemble baseline", f"{PAPER_ENSEMBLE} independently trained MAP networks",
             {"method": "ensemble", "members": PAPER_ENSEMBLE, "member_method": "map"})
Z32 = {"z_dim": 32, "h_dim": 32}  # the paper's z_dim = h_dim for PyramidNet, SVHN, ResNet-50
_SETTINGS = [
    ("paper-wrn28-10-c10", "Table I", {**CIFAR10, "model": "wrn-28-10", "epochs": 800},
     {"": ("Table I", "WRN-28-10 on CIFAR-10, hypernet all-in-one U(0,1), 800 epochs",
           {"prior": "uniform01"})},
     {"map": _MAP, "ensemble": _ENSEMBLE}),
    ("paper-resnext29-8x64d-c10", "Table I",
     {**CIFAR10, "model": "resnext-29-8x64d", "epochs": 900},
     {"": ("Table I", "ResNeXt-29 (8x64d) on CIFAR-10, hypernet all-in-one U(0,1), 900 epochs",
           {"prior": "uniform01"})},
     {"map": _MAP, "ensemble": _ENSEMBLE}),
    ("paper-pyramidnet110-48-c10", "Table I",
     {**CIFAR10, "model": "pyramidnet-110-48", "epochs": 600},
     {"": ("Table I", "PyramidNet-110 (alpha 48) on CIFAR-10, hypernet all-in-one U(0,1), "
                      "z_dim = h_dim = 32, 600 epochs", {"prior": "uniform01", **Z32})},
     {"map": _MAP, "ensemble": _ENSEMBLE}),
    # z_dim = h_dim is not stated for WRN-28-4: 16, the paper's other value
    ("paper-wrn28-4-c10", "Fig. 7 / Tables IV-V",
     {**CIFAR10, "model": "wrn-28-4", "epochs": 800},
     {**{f"-{prior}": ("Table IV / Table V / Fig. 7" if prior == "normal"
                       else "Table V / Fig. 7",
                       f"WRN-28-4 on CIFAR-10, hypernet all-in-one, p(z) = {law}, 800 epochs",
                       {"prior": prior}) for prior, law in PRIOR_NAMES.items()},
      # Fig. 6 compares the strategies under N(0,1); Sec. 5.6 measures their weight
      # correlations under U(0,1) (all-in-one U(0,1) is -uniform01)
      **{f"-{name}{suffix}": (source, f"WRN-28-4 on CIFAR-10, hypernet {strategy} "
                                      f"{PRIOR_NAMES[prior]}, 800 epochs",
                              {"strategy": strategy, "prior": prior})
         for name, strategy in (("blockwise", "block-wise"), ("layerwise", "layer-wise"))
         for suffix, prior, source in (("", "normal", "Fig. 6"),
                                       ("-uniform01", "uniform01", "Sec. 5.6"))}},
     {"map": ("Fig. 7 (MAP)", _MAP[1], _MAP[2]),
      "ensemble": ("Table IV (MAP ensemble)", _ENSEMBLE[1], _ENSEMBLE[2]),
      "mle-ensemble": ("Table IV (MLE ensemble)",
                       f"{PAPER_ENSEMBLE} independently trained MLE networks (no weight decay)",
                       {"method": "ensemble", "members": PAPER_ENSEMBLE,
                        "member_method": "mle"})}),
    ("paper-wrn16-4-svhn", "Table II", {**SVHN, "model": "wrn-16-4"},
     {f"-{prior}": ("Table II", f"WRN-16-4 on SVHN (WideResNet's SVHN recipe), hypernet "
                                f"all-in-one {PRIOR_NAMES[prior]}, z_dim = h_dim = 32, "
                                "160 epochs", {"prior": prior, **Z32})
      for prior in ("uniform01", "normal")},
     {"map": _MAP, "ensemble": _ENSEMBLE}),
    ("paper-resnet50-imagenet", "Table III", IMAGENET,
     {"": ("Table III", "ResNet-50 on ImageNet (--data imagenet:PATH), hypernet all-in-one "
                        "U(0,1), z_dim = h_dim = 32, the standard 90-epoch schedule",
           {"prior": "uniform01", **Z32})},
     {"map": _MAP, "ensemble": _ENSEMBLE}),
    ("c10-10k", "reproduction protocol (CPU-sized)", C10_10K,
     {"": ("reproduction protocol (CPU-sized)", "wrn-16-2 on a class-balanced 10k subset of "
                                                "../shared/data/cifar10, hypernet all-in-one "
                                                "N(0,1), 40 epochs", {}),
      "-best": ("reproduction protocol (CPU-sized)", "wrn-16-2 on the 10k subset, the best "
                                                     "hypernet found (train's default: "
                                                     "all-in-one U(0,1), 4 z per step), "
                                                     "40 epochs",
                BEST_HYPERNET)},
     {"map": _MAP,
      "ensemble": (_ENSEMBLE[0], "4 independently trained MAP networks (CPU-sized)",
                   {**_ENSEMBLE[2], "members": 4})}),
]


def _build() -> dict[str, Recipe]:
    recipes: dict[str, Recipe] = {}
    for base, table, setting, variants, baselines in _SETTINGS:
        for suffix, (source, description, changes) in variants.items():
            name = base + suffix
            recipes[name] = Recipe(name, source, description, {**setting, **HYPERNET, **changes})
        for suffix, (kind, description, changes) in baselines.items():
            name = f"{base}-{suffix}"
            source = kind if kind.startswith(("Fig.", "Table")) else f"{table} {kind}"
            recipes[name] = Recipe(name, source, description, {**setting, **changes})
    return recipes


RECIPES: dict[str, Recipe] = _build()

# --smoke: the tiny network of each family (as the tests use), on tiny data, for one epoch
SMOKE_MODELS = {"wrn-": "wrn-10-1", "resnext-": "resnext-11-2x4d",
                "pyramidnet-": "pyramidnet-20-24", "resnet-": "resnet-14-w8"}
SMOKE = {"data": "digits", "train_subset": 40, "epochs": 1, "batch_size": 8, "workers": 0}
SMOKE_MEMBERS = 2


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; a ValueError listing every recipe if there is none."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)} "
                         "(pyro-implicit recipes lists them)")
    return RECIPES[name]


def smoke_model(model: str) -> str:
    """The tiny config of ``model``'s family (``wrn-28-10`` -> ``wrn-10-1``)."""
    for prefix, tiny in SMOKE_MODELS.items():
        if model.startswith(prefix):
            return tiny
    raise ValueError(f"--smoke has no tiny config for model {model!r}; families: "
                     f"{', '.join(SMOKE_MODELS.values())}")


def resolve_config(flags: TrainConfig, explicit: set[str], recipe: str | None = None,
            smoke: bool = False) -> TrainConfig:
    """The configuration of a ``train`` command line, validated.

    ``flags`` holds every flag's value (typed or default), ``explicit`` the TrainConfig fields
    the user typed. The recipe's values replace the defaults, ``smoke`` scales the result down
    (network -> the tiny one of its family; digits, 40 items, 1 epoch, batch 8, at most 2
    ensemble members, no loader workers; with ``--data`` the given data is used whole), and the
    explicit flags override both.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = set(explicit) & fields - {"recipe", "smoke"}  # the options resolved here
    config = flags
    if recipe is not None:
        entry = get_recipe(recipe)
        config = entry.config(**{k: getattr(flags, k) for k in fields - set(entry.overrides)
                                 - {"recipe"}})
        if entry.needs_data and "data" not in explicit and not smoke:
            raise ValueError(f"recipe {recipe} trains on ImageNet: pass --data imagenet:PATH "
                             "(PATH/train/<class>/* and PATH/val/<class>/*)")
    if smoke:
        changes = {**SMOKE, "model": smoke_model(config.model), "smoke": True,
                   "members": min(config.members, SMOKE_MEMBERS)}
        if "data" in explicit:
            changes["train_subset"] = None
        config = dataclasses.replace(config, **changes)
    config = dataclasses.replace(config, **{k: getattr(flags, k) for k in explicit})
    return validate(config)


def describe_recipes() -> str:
    """The table printed by ``pyro-implicit recipes``."""
    width = max(map(len, RECIPES))
    lines = []
    for recipe in RECIPES.values():
        lines.append(f"{recipe.name:<{width}}  {recipe.source}: {recipe.description}")
        lines.append(f"{'':<{width}}    {recipe.settings()}")
    lines.append("usage: pyro-implicit train --recipe NAME --out RUN [any flag overrides the "
                 "recipe] [--smoke: tiny network and data, to check that it runs]")
    return "\n".join(lines)
