"""Run folders: their file names, what a built run is, building one from a config, and loading a
trained one. Training (:mod:`.train`), evaluation, analysis and ensembles all meet here.

A run folder holds ``config.json`` (the :class:`~.config.TrainConfig`), ``checkpoint.pt`` (model,
guide, optimiser, position and RNG states: see :mod:`.train`) and ``metrics.json`` (the
per-epoch history). A folder is a run once its ``config.json`` exists.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro.nn import PyroModule

from pyro_implicit import BayesianNetwork

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .data import Normalizer, load_data
from .distributed import convert_sync_batchnorm
from .folders import uint8_batches
from .images import ImageData
from .methods import build

CONFIG, METRICS, CHECKPOINT = "config.json", "metrics.json", "checkpoint.pt"


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training; a checkpoint of the exact position was written."""


@dataclass
class Run:
    """A built run: configuration, data, the Pyro model and guide, and the input pipeline."""

    config: TrainConfig
    data: ImageData
    model: BayesianNetwork
    guide: PyroModule
    normalizer: Normalizer

    def train_inputs(self, batch_size: int | None = None) -> Iterator[torch.Tensor]:
        """Training images normalised, augmentation off (for BN recalibration), in one fixed
        shuffled order: image folders list their items class by class, so the first K
        batches of a partial pass (``--bn-batches K``) must be a random sample, not K/C
        classes."""
        size, n = batch_size or self.config.batch_size, len(self.data.train_y)
        cuda = torch.device(self.config.device).type == "cuda"
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        for x in uint8_batches(self.data.train_x, range(0, n, size), size, self.config.workers,
                               pin=cuda, order=order):
            yield self.normalizer(x)


def is_run(folder: Path | str) -> bool:
    """Whether ``folder`` holds a run (its ``config.json``)."""
    return (Path(folder) / CONFIG).is_file()


def read_config(folder: Path | str, device: str | None = None) -> TrainConfig:
    """The validated config of the run in ``folder`` (``device`` replacing the saved one); a
    clear error when ``folder`` is not a run."""
    if not is_run(folder):
        raise FileNotFoundError(f"{folder} is not a run folder (no {CONFIG})")
    return TrainConfig.load(Path(folder) / CONFIG, device)


def history(folder: Path | str) -> list[dict]:
    """The per-epoch records of ``metrics.json`` (empty before the first epoch ends)."""
    metrics = Path(folder) / METRICS
    return json.loads(metrics.read_text())["history"] if metrics.is_file() else []


def is_finished(folder: Path | str) -> bool:
    """Whether ``folder`` holds a run that has trained all its epochs."""
    return is_run(folder) and len(history(folder)) >= read_config(folder).epochs


def build_run(config: TrainConfig, data: ImageData | None = None) -> Run:
    """Load data and build a freshly initialised model and guide from a validated ``config``."""
    if data is None:
        data = load_data(config.data, config.train_subset, config.data_root, config.download)
    pyro.set_rng_seed(config.seed)
    model, guide = build(config, data.num_classes, data.in_channels, len(data.train_y))
    if config.sync_bn:
        convert_sync_batchnorm(model.net)
    model.to(config.device)
    guide.to(config.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if torch.device(config.device).type == "cuda":
        torch.backends.cudnn.benchmark = True
    mean, std = data.channel_stats()
    normalizer = Normalizer(mean, std, data.pad, data.flip, config.device, augment=data.augment)
    return Run(config, data, model, guide, normalizer)


def prepare(config: TrainConfig, data: ImageData | None = None) -> Run:
    """:func:`build_run` for a config from outside: validated first."""
    return build_run(config.validate(), data)


def load_run(folder: Path | str, data: ImageData | None = None, device: str | None = None,
             config: TrainConfig | None = None) -> Run:
    """Rebuild a trained run from its folder: config (``config`` when already read), data,
    model, guide and BN buffers (on ``device`` when given, e.g. a GPU-trained run on a
    CPU-only machine)."""
    folder = Path(folder)
    run = build_run(config or read_config(folder, device), data)
    load_states(folder, load_checkpoint(folder / CHECKPOINT), run)
    return run


def load_states(folder: Path, state: dict, run: Run, optimizer=None) -> None:
    """Restore model, guide (and optimiser) states; a mismatch is a clear ValueError."""
    try:
        run.model.load_state_dict(state["model"])
        run.guide.load_state_dict(state["guide"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
            for key in ("history", "epoch", "step", "rng"):
                state[key]  # noqa: B018 - presence check
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"{folder / CHECKPOINT} does not match the run's configuration: "
                         f"{str(err).splitlines()[0]}") from err
