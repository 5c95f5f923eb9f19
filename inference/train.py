"""The training loop: SGD (Nesterov) with a step schedule on a Pyro loss, one run folder per run.

A run folder holds ``config.json``, ``checkpoint.pt`` (after every epoch, atomically) and
``metrics.json`` (per-epoch loss, accuracy, lr, seconds). ``fit(..., resume=True)`` continues
from the last completed epoch and ends exactly where an uninterrupted run would.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro.nn import PyroModule
from tqdm.auto import tqdm

from pyro_implicit import BayesianNetwork, ImplicitMAP

from .checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import ImageData, Normalizer, batches, load_data
from .methods import build

CONFIG, METRICS = "config.json", "metrics.json"


@dataclass
class Run:
    """A built run: configuration, data, the Pyro model and guide, and the input pipeline."""

    config: TrainConfig
    data: ImageData
    model: BayesianNetwork
    guide: PyroModule
    normalizer: Normalizer
    mean: list[float]
    std: list[float]

    def train_inputs(self, batch_size: int | None = None):
        """Training images normalised, augmentation off (for BN recalibration)."""
        for x in batches(self.data.train_x, None, batch_size or self.config.batch_size):
            yield self.normalizer(x)


def prepare(config: TrainConfig, data: ImageData | None = None) -> Run:
    """Load data and build a freshly initialised model and guide from ``config``."""
    config.validate()
    if data is None:
        data = load_data(config.data, config.train_subset, config.data_root, config.download)
    pyro.set_rng_seed(config.seed)
    model, guide = build(config, data.num_classes, data.in_channels, len(data.train_y))
    model.to(config.device)
    guide.to(config.device)
    mean, std = data.channel_stats()
    normalizer = Normalizer(mean, std, data.pad, data.flip, config.device)
    return Run(config, data, model, guide, normalizer, mean, std)


def _optimizer(run: Run) -> torch.optim.Optimizer:
    params = list({id(p): p for m in (run.model, run.guide) for p in m.parameters()}.values())
    c = run.config
    kwargs = dict(lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)
    try:  # the prior is in the loss, so no weight_decay here
        return torch.optim.SGD(params, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.SGD(params, foreach=True, **kwargs)


def fit(config: TrainConfig, out: Path, resume: bool = False, progress: bool | None = None,
        data: ImageData | None = None) -> Run:
    """Train ``config`` into the run folder ``out`` (or continue it when ``resume``)."""
    out = Path(out)
    if resume:
        config = TrainConfig.load(out / CONFIG)
    elif (out / CONFIG).exists():
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, "
                              "or choose another --out")
    run = prepare(config, data)
    out.mkdir(parents=True, exist_ok=True)
    optimizer = _optimizer(run)
    loss_fn = ImplicitMAP(config.weight_decay)
    data_gen = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    start = 0
    if resume:
        state = load_checkpoint(out / CHECKPOINT)
        run.model.load_state_dict(state["model"])
        run.guide.load_state_dict(state["guide"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        data_gen.set_state(state["rng"]["data"])
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        history, start = list(state["history"]), int(state["epoch"])
    else:
        config.save(out / CONFIG)
    x_all, y_all = run.data.train_x, run.data.train_y
    steps = -(-len(y_all) // config.batch_size)
    for epoch in range(start, config.epochs):
        lr = config.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        run.model.train()
        run.guide.train()
        t0 = time.perf_counter()
        total_loss, correct, seen = 0.0, 0, 0
        bar = tqdm(batches(x_all, y_all, config.batch_size, data_gen), total=steps,
                   desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=None if progress is None else not progress,
                   leave=False, dynamic_ncols=True)
        for x, y in bar:
            x = run.normalizer(x, data_gen)
            y = y.to(config.device)
            loss, logits = loss_fn.loss_and_logits(run.model, run.guide, x, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} in epoch {epoch + 1}; "
                                         f"the last good checkpoint is kept in {out}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(-1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        record = {"epoch": epoch + 1, "lr": lr, "loss": total_loss / seen,
                  "train_error": 1 - correct / seen, "seconds": time.perf_counter() - t0}
        history.append(record)
        save_checkpoint({
            "format": config.format, "epoch": epoch + 1, "history": history,
            "model": run.model.state_dict(), "guide": run.guide.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": data_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }, out / CHECKPOINT)
        (out / METRICS).write_text(json.dumps({"history": history}, indent=2) + "\n")
        if progress is not False:
            tqdm.write(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f} "
                       f"train error {record['train_error']:.4f} lr {lr:g} "
                       f"({record['seconds']:.1f}s)")
    return run


def load_run(out: Path, data: ImageData | None = None) -> Run:
    """Rebuild a trained run from its folder: config, data, model, guide and BN buffers."""
    out = Path(out)
    if not (out / CONFIG).is_file():
        raise FileNotFoundError(f"{out} is not a run folder (no {CONFIG})")
    config = TrainConfig.load(out / CONFIG)
    run = prepare(config, data)
    state = load_checkpoint(out / CHECKPOINT)
    run.model.load_state_dict(state["model"])
    run.guide.load_state_dict(state["guide"])
    return run
