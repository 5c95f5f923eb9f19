"""Run folders: their file names, what a built run is, building one from a config, and loading a
trained one. Training (:mod:`.train`), evaluation, analysis and ensembles all meet here.

A run folder holds ``config.json`` (the :class:`~.config.TrainConfig`), ``checkpoint.pt`` (model,
guide, optimiser, position and RNG states, and the config it was trained with: see :mod:`.train`)
and ``metrics.json`` (the per-epoch history). A folder is a run once its ``config.json`` exists.
While a process writes a run folder it holds an OS lock on ``.lock`` there (:func:`locked`),
which dies with the process; a second writer is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro.nn import PyroModule
from torch.utils.data import DataLoader, TensorDataset

from pyro_implicit import BayesianNetwork, sync_param_store

from .checkpoint import load_checkpoint
from .config import TrainConfig, complete_saved
from .data import Normalizer, load_data
from .distributed import convert_sync_batchnorm
from .folders import is_lazy, uint8_batches
from .images import ImageData
from .methods import build, check_against_method, validate
from .outputs import write_json

CONFIG, METRICS, CHECKPOINT, LOCK = "config.json", "metrics.json", "checkpoint.pt", ".lock"
MEMBERS = "members"  # an ensemble's member runs: RUN/members/<m>


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped training; a checkpoint of the exact position was written."""


class RunLocked(FileExistsError):
    """Another live process is writing the run folder."""


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s write lock (``fcntl.flock`` on ``folder/.lock``, released by the OS when
    the process ends, however it ends); :class:`RunLocked` names the holder's pid. A folder
    this call created (with any parents it created) is removed again if it is not a run when
    the lock is let go."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunLocked(f"{folder} is being written by process {holder}: wait for it to end, "
                        "or choose another --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    try:
        yield
    finally:
        if not is_run(folder):  # nothing of a run was written: leave nothing behind
            (folder / LOCK).unlink(missing_ok=True)
            for made in created:  # innermost first
                if any(made.iterdir()):
                    break
                made.rmdir()
        os.close(fd)


def check_new_run_folder(folder: Path, members: bool = False) -> None:
    """Refuse ``folder`` for a new run unless it is absent or empty (ours: a stale lock, and for
    an ensemble the ``members/`` folder of its member runs): a folder one did not create is
    never written into."""
    if str(folder) in ("", "."):
        raise ValueError(f"--out needs a new folder's name, got {str(folder)!r}")
    if is_run(folder):
        raise FileExistsError(f"{folder} already holds a run: pass --resume to continue it, "
                              "or choose another --out")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder} is a file, not a folder")
    if not folder.is_dir():
        return
    ours = {LOCK} | ({MEMBERS} if members and _only_runs(folder / MEMBERS) else set())
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise ValueError(f"--out {folder} is a folder that is not a run of ours and not empty "
                         f"({shown}): nothing is written into it; choose a new or empty folder")


def _only_runs(folder: Path) -> bool:
    """Whether every entry of ``folder`` is a run folder or an empty folder (or a link to one)."""
    return folder.is_dir() and all(
        p.is_dir() and (is_run(p) or not any(p.iterdir())) for p in folder.iterdir())


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

    def labelled_batches(self) -> DataLoader:
        """The training set normalised, augmentation off, in its order, as (x, y) batches (what
        a post-hoc method is fitted on); in-memory data only."""
        data, size = self.data, self.config.batch_size
        if is_lazy(data.train_x):
            raise ValueError("a post-hoc method is fitted to in-memory data; "
                             "imagenet:PATH is not supported")
        x = torch.cat([self.normalizer(b) for b in uint8_batches(
            data.train_x, range(0, len(data.train_y), size), size, self.config.workers)])
        return DataLoader(TensorDataset(x, data.train_y.to(x.device)), batch_size=size)

    def own_param_store(self) -> None:
        """Point Pyro's global param store at this run's parameters: several runs in one
        process share it by parameter name, and the last one built would own it."""
        sync_param_store(self.model, self.guide, source="modules")


def is_run(folder: Path | str) -> bool:
    """Whether ``folder`` holds a run (its ``config.json``)."""
    return (Path(folder) / CONFIG).is_file()


def read_config(folder: Path | str, device: str | None = None) -> TrainConfig:
    """The validated config of the run in ``folder`` (``device`` replacing the saved one); a
    clear error when ``folder`` is not a run."""
    if not is_run(folder):
        raise FileNotFoundError(f"{folder} is not a run folder (no {CONFIG})")
    path = Path(folder) / CONFIG
    config = TrainConfig.load(path, device)  # its knobs checked
    try:
        return check_against_method(config)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def history(folder: Path | str) -> list[dict]:
    """The per-epoch records of ``metrics.json`` (empty before the first epoch ends), else of the
    checkpoint when ``metrics.json`` is unreadable (a kill cut its write short)."""
    folder = Path(folder)
    try:
        return json.loads((folder / METRICS).read_text())["history"]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        if not (folder / CHECKPOINT).is_file():
            raise ValueError(f"{folder / METRICS} is unreadable and there is no checkpoint to "
                             "rebuild it from") from None
        return list(load_checkpoint(folder / CHECKPOINT)["history"])


def sync_metrics(folder: Path, recorded: list[dict]) -> bool:
    """Rewrite ``metrics.json`` from the checkpoint's history ``recorded`` when it is unreadable
    or says otherwise; whether it had to be repaired."""
    try:
        if json.loads((folder / METRICS).read_text())["history"] == recorded:
            return False
    except FileNotFoundError:
        if not recorded:
            return False
    except (ValueError, KeyError, TypeError):
        pass
    write_json(folder / METRICS, {"history": recorded})
    return True


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
    sync_param_store(model, guide, source="modules")  # the run's modules own their parameters
    return Run(config, data, model, guide, normalizer)


def prepare(config: TrainConfig, data: ImageData | None = None) -> Run:
    """:func:`build_run` for a config from outside: validated first."""
    return build_run(validate(config), data)


def load_run(folder: Path | str, data: ImageData | None = None, device: str | None = None,
             config: TrainConfig | None = None) -> Run:
    """Rebuild a trained run from its folder: config (``config`` when already read), data,
    model, guide and BN buffers (on ``device`` when given, e.g. a GPU-trained run on a
    CPU-only machine)."""
    folder = Path(folder)
    run = build_run(config or read_config(folder, device), data)
    load_states(folder, load_checkpoint(folder / CHECKPOINT), run)
    return run


IGNORED_IN_CHECK = ("device",)  # may be replaced on loading (a GPU run read on a CPU)


def load_states(folder: Path, state: dict, run: Run, optimizer=None) -> None:
    """Restore model, guide (and optimiser) states; a checkpoint trained with another config
    than ``config.json``, or holding other tensors than the run's, is a clear ValueError."""
    path = folder / CHECKPOINT
    trained = state.get("config")  # absent in checkpoints of earlier versions
    if trained is not None:
        trained = complete_saved(trained)  # knobs added since it was written, as config.json's
        mine = dataclasses.asdict(run.config)
        differ = sorted(k for k in set(mine) | set(trained)
                        if k not in IGNORED_IN_CHECK and mine.get(k) != trained.get(k))
        if differ:
            shown = ", ".join(f"{k}: {trained.get(k)!r} in the checkpoint, {mine.get(k)!r} in "
                              f"{CONFIG}" for k in differ[:3])
            raise ValueError(f"{path} was trained with another configuration than {folder / CONFIG}"
                             f" ({shown}); the two files come from different runs")
    for part in ("model", "guide"):
        mismatch = state_mismatch(getattr(run, part).state_dict(), state.get(part, {}))
        if mismatch:
            raise ValueError(f"{path} does not match the run's configuration: its {part} "
                             f"{mismatch}")
    run.model.load_state_dict(state["model"])
    run.guide.load_state_dict(state["guide"])
    sync_param_store(run.model, run.guide, source="modules")
    if optimizer is not None:
        missing = [k for k in ("optimizer", "history", "epoch", "step", "rng") if k not in state]
        if missing:
            raise ValueError(f"{path} cannot resume training: it lacks {', '.join(missing)}")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path} does not match the run's optimiser: "
                             f"{str(err).splitlines()[0]}") from err


def state_mismatch(expected: dict, saved: dict) -> str | None:
    """How ``saved`` differs from the state dict ``expected`` (first keys and shapes), or None."""
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]
    shapes = [f"{k} {tuple(saved[k].shape)} (expected {tuple(expected[k].shape)})"
              for k in expected if k in saved and hasattr(saved[k], "shape")
              and saved[k].shape != expected[k].shape]
    parts = [f"{what} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
             for what, keys in (("lacks", missing), ("has unexpected", unexpected),
                                ("has other shapes:", shapes)) if keys]
    return "; ".join(parts) or None
