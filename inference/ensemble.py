"""Training an ensemble: one ordinary ``map``/``mle`` run per member, inside the ensemble's run
folder.

``RUN/members/<m>`` is member m's own run folder (its config, checkpoint and metrics), trained
with seed ``seed * M + m`` (its own initialisation, data order and augmentation), so members
resume exactly like any run. Members train one after another; when all are done, ``RUN`` gets
``checkpoint.pt`` holding the ensemble's model and guide (every member's weights) and
``metrics.json`` with, per epoch, the members' mean loss and training error and the sum of their
epoch times. ``RUN/config.json`` is written before the first member starts (and removed again if
training stops before any member checkpoint), so ``train --resume RUN`` continues an interrupted
ensemble at the member and step where it stopped.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path

from .checkpoint import save_checkpoint
from .config import TrainConfig
from .data import load_data
from .distributed import setup
from .images import ImageData
from .outputs import write_json
from .runs import (
    CHECKPOINT,
    CONFIG,
    MEMBERS,
    METRICS,
    Run,
    TrainingInterrupted,
    build_run,
    history,
)


def member_config(config: TrainConfig, index: int) -> TrainConfig:
    """The configuration of member ``index``: a ``member_method`` run with its own seed."""
    return dataclasses.replace(config, method=config.member_method,
                               seed=config.seed * config.members + index)


def fit_members(config: TrainConfig, out: Path, progress: bool | None,
                data: ImageData | None, fit: Callable[..., Run]) -> Run:
    """Train (or continue) every member of the validated ensemble ``config`` in ``out``, each
    as an ordinary run by ``fit`` (:func:`~.train.fit`); the ensemble Run."""
    main = setup(config.device).is_main
    if data is None:
        data = load_data(config.data, config.train_subset, config.data_root, config.download)
    created = not (out / CONFIG).exists()
    if created and main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / CONFIG)
    runs = []
    try:
        for index in range(config.members):
            folder = out / MEMBERS / str(index)
            try:
                runs.append(fit(member_config(config, index), folder,
                                resume=(folder / CONFIG).is_file(), progress=progress,
                                data=data))
            except TrainingInterrupted as stop:
                raise TrainingInterrupted(f"member {index}: {str(stop).split(':')[0]}; continue "
                                          f"the ensemble with `pyro-implicit train --resume "
                                          f"{out}`") from stop
    except BaseException:
        if created and main and not (out / MEMBERS).exists():  # nothing trained: no run
            (out / CONFIG).unlink(missing_ok=True)
        raise
    ensemble = build_run(config, data)
    ensemble.guide.load_members([dict(run.model.net.named_parameters()) for run in runs])
    if main:  # rank 0 wrote the members' metrics
        history = combined_history(out, config.members)
        save_checkpoint({"format": config.format, "epoch": config.epochs, "step": 0,
                         "history": history, "model": ensemble.model.state_dict(),
                         "guide": ensemble.guide.state_dict(),
                         "config": dataclasses.asdict(config)}, out / CHECKPOINT)
        write_json(out / METRICS, {"history": history})
    return ensemble


MEAN_KEYS = ("loss", "train_error", "prior")  # averaged over members (prior: absent in old runs)


def combined_history(out: Path, members: int) -> list[dict]:
    """Per epoch: the members' mean loss, training error and prior term, and the sum of their
    epoch times."""
    histories = [history(out / MEMBERS / str(m)) for m in range(members)]
    return [{"epoch": epochs[0]["epoch"], "lr": epochs[0]["lr"],
             **{key: statistics.fmean(e[key] for e in epochs) for key in MEAN_KEYS
                if all(key in e for e in epochs)},
             "seconds": sum(e["seconds"] for e in epochs)}
            for epochs in zip(*histories, strict=True)]
