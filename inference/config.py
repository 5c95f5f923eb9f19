"""Run configuration: every knob of a training run, checked up front, stored as config.json
(:func:`.methods.validate` checks a config whole, with what its method asks of it)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pyro_implicit.models.registry import resolve_model

from .data import check_data_spec
from .options import OPTION_GROUPS
from .outputs import write_json

CONFIG_FORMAT = 1


def check_device(name: str) -> str:
    """Return ``name`` if it is a usable torch device, else raise a ValueError saying why."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; choose cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}; choose cpu or cuda[:N]")
    return name


PRECISIONS = ("fp32", "bf16")


def default_device() -> str:
    """``cuda`` when a GPU is available, else ``cpu`` (the default of ``--device``)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_precision(device: str, precision: str) -> str:
    """Return ``precision`` if ``device`` can train in it, else raise a ValueError saying why.
    ``bf16`` (autocast) works on CPU and on GPUs with bfloat16 support (Ampere or newer)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of: "
                         f"{', '.join(PRECISIONS)}")
    if (precision == "bf16" and torch.device(device).type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise ValueError(f"--precision bf16 needs a GPU with bfloat16 support (Ampere or newer); "
                         f"{torch.cuda.get_device_name(device)} has none: use --precision fp32")
    return precision


# Upper bounds of sizes, far above any real run, so that a typo fails in one line instead of in
# the allocator (theta holds h_dim numbers per generated weight; the paper uses z, h in 4..128)
LIMITS = {"epochs": 100_000, "batch_size": 1 << 16, "z_dim": 1024, "h_dim": 1024,
          "members": 1024, "z_draws": 1024, "bn_groups": 1024, "flow_layers": 64,
          "flow_hidden": 1 << 14, "swag_rank": 1024}


# Knobs added after runs of CONFIG_FORMAT 1 were written, with the value that reproduces a run
# written before them (its config.json and checkpoint lack the key), so that their defaults may
# move on; every other missing key takes its default, which is the old behaviour
ADDED_LATER = {"flow_scale_bound": 0.0, "flow_grad_norm": 0.0, "repulsion": 0.0, "z_draws": 1}


def complete_saved(raw: dict) -> dict:
    """A saved config (``config.json``, a checkpoint's ``config``) with its missing knobs
    filled: the :data:`ADDED_LATER` value of a knob added since, else the field's default."""
    filled = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in raw:
            continue
        if f.name in ADDED_LATER:
            filled[f.name] = ADDED_LATER[f.name]
        elif f.default is not dataclasses.MISSING:
            filled[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            filled[f.name] = f.default_factory()
    return {**raw, **filled}


def _kind(hint: object) -> tuple[tuple[type, ...], str]:
    """The accepted Python types of a field's type hint, and how to name them in a message."""
    args = set(typing.get_args(hint))
    if type(None) in args:  # X | None
        (inner,) = args - {type(None)}
        types, name = _kind(inner)
        return (*types, type(None)), f"{name} or null"
    if typing.get_origin(hint) is list:
        return (list,), "a list of numbers"
    return {bool: ((bool,), "true or false"), int: ((int,), "an integer"),
            float: ((int, float), "a number"), str: ((str,), "a string")}[hint]


def check_types(config: object) -> None:
    """Raise a ValueError naming the first field whose value has the wrong type for its hint (a
    string for a number, a float for an integer, NaN or infinity, a scalar for a list)."""
    for name, hint in typing.get_type_hints(type(config)).items():
        if typing.get_origin(hint) is typing.ClassVar:
            continue
        value = getattr(config, name)
        types, wanted = _kind(hint)
        numbers = [value] if isinstance(value, float) else value if isinstance(value, list) else []
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if ok and isinstance(value, list):
            ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        if not ok or any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise ValueError(f"{name} must be {wanted}, got {value!r}")


@dataclass
class TrainConfig(*OPTION_GROUPS):  # every method's knobs (see .options), flat
    """A training run. Defaults follow the paper's recipe (WideResNet's CIFAR schedule); each
    method's knobs come from its group in :mod:`.options`."""

    model: str = "wrn-16-2"
    method: str = "hypernet"
    drop_rate: float = 0.0
    data: str = "digits"
    data_root: str | None = None
    download: bool = False
    train_subset: int | None = None
    epochs: int = 40
    batch_size: int = 128
    bn_groups: int = 1  # ghost BatchNorm: statistics over batch_size / bn_groups images
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    milestones: list[float] = field(default_factory=lambda: [0.4, 0.6, 0.8])
    gamma: float = 0.2
    seed: int = 0
    device: str = "cpu"
    sync_bn: bool = False
    per_rank_z: bool = False
    precision: str = "fp32"  # the GPU path: bf16 autocast, channels_last, loader workers
    channels_last: bool = False
    workers: int = 8  # DataLoader workers of lazy (imagenet:PATH) data
    recipe: str | None = None  # the --recipe this run came from (see .recipes), and --smoke
    smoke: bool = False
    format: int = CONFIG_FORMAT

    def check(self) -> TrainConfig:
        """Raise a ValueError naming the first bad value and the valid choices, of the knobs
        alone; :func:`.methods.validate` checks the config whole, with what its method asks."""
        check_types(self)
        resolve_model(self.model)
        for group in OPTION_GROUPS:
            group.check(self)
        check_data_spec(self.data)
        for name, most in LIMITS.items():
            value = getattr(self, name)
            if not 1 <= value <= most:
                raise ValueError(f"{name} must be an integer in 1..{most}, got {value}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"train_subset must be positive, got {self.train_subset}")
        for name in ("lr", "weight_decay", "momentum", "gamma"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            # derived seeds (per rank, per ensemble member) must stay in torch's seed range
            raise ValueError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not 0 <= self.drop_rate < 1:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if (self.z_hold or self.z_warmup) and self.z_hold + self.z_warmup >= self.epochs:
            raise ValueError(f"z_hold + z_warmup ({self.z_hold} + {self.z_warmup}) must leave "
                             f"epochs at full spread: fewer than epochs ({self.epochs})")
        check_device(self.device)
        check_precision(self.device, self.precision)
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0, got {self.workers!r}")
        if any(not 0 < m < 1 for m in self.milestones):
            raise ValueError(
                f"milestones are fractions of the epochs in (0, 1), got {self.milestones}")
        return self

    def lr_at(self, epoch: int) -> float:
        """Step schedule: lr times gamma for each milestone (a fraction of epochs) passed."""
        drops = sum(epoch >= max(1, int(m * self.epochs)) for m in self.milestones)
        return self.lr * self.gamma**drops

    def save(self, path: Path) -> None:
        """Write config.json atomically (:mod:`.outputs`)."""
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: Path, device: str | None = None) -> TrainConfig:
        """The config saved at ``path``, its knobs checked (:meth:`check`); ``device`` replaces
        the saved device (a GPU-trained run read on a CPU-only machine)."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read run config {path}: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a JSON object of config values, got a "
                             f"{type(raw).__name__}")
        if raw.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{path} was written by an incompatible version "
                             f"(format {raw.get('format')}, expected {CONFIG_FORMAT})")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"{path} has unknown keys {sorted(unknown)}")
        if device is not None:
            raw["device"] = device
        try:
            return cls(**complete_saved(raw)).check()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
