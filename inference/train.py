"""The training loop: SGD (Nesterov) with a step schedule on a Pyro loss, one run folder per run.

A run folder holds ``config.json`` and ``checkpoint.pt`` (written together, atomically, after
every epoch and when SIGTERM or SIGINT stops training mid-epoch: a run that fails before its
first checkpoint leaves no run behind) and ``metrics.json`` (per-epoch loss,
training error, lr, seconds). A checkpoint holds the model, guide, optimiser, position in the
epoch (its data order and step) and every RNG state, so ``fit(..., resume=True)`` ends
bit-identical to an uninterrupted run on CPU. Under torchrun it trains data-parallel
(see :mod:`.distributed`); rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.nn import PyroModule
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pyro_implicit import BayesianNetwork, ImplicitGuide
from pyro_implicit.hypernet import HyperNetworks, release_grads
from pyro_implicit.objective import unique_parameters

from .checkpoint import CHECKPOINT, load_checkpoint, remove_stale_temp_files, save_checkpoint
from .config import TrainConfig
from .data import ImageData, Normalizer, load_data, to_device
from .distributed import Dist, convert_sync_batchnorm, setup
from .folders import is_lazy, train_batches, uint8_batches
from .methods import METHODS, build, z_spread

CONFIG, METRICS = "config.json", "metrics.json"
SYNC_EVERY = 50  # steps between reads of the loss sums (the only host-device syncs of a step)


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

    def train_inputs(self, batch_size: int | None = None):
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


def prepare(config: TrainConfig, data: ImageData | None = None) -> Run:
    """Load data and build a freshly initialised model and guide from ``config``."""
    config.validate()
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


def make_optimizer(config: TrainConfig, model: PyroModule, guide: PyroModule,
                   fuse: bool = True) -> torch.optim.Optimizer:
    """SGD (Nesterov) over the unique parameters of model and guide, fused where available.

    The loss's Gaussian prior is applied here, as SGD weight decay on the parameters it covers
    (the losses of :func:`make_loss` leave it out): the same gradient, without extra passes.
    With ``fuse`` (not under data parallelism, whose all-reduce needs every gradient, nor with
    several z draws per step, whose backward runs once per draw) the hypernetworks' output
    layers are updated inside their backward on CPU
    (:meth:`~pyro_implicit.HyperNetworks.fuse_sgd`): the same step in one pass over theta.
    Each group's ``lr_scale`` multiplies the schedule's lr (``theta_lr_scale`` for the output
    layers, 1 elsewhere).
    """
    loss = make_loss(config)
    decayed = loss.decayed_parameters(model, guide) if loss.weight_decay else []
    ids = {id(p) for p in decayed}
    rest = [p for p in unique_parameters(model, guide) if id(p) not in ids]
    scaled = {id(m.output) for m in guide.modules() if isinstance(m, HyperNetworks)} \
        if config.theta_lr_scale != 1 else set()
    groups = [{"params": chosen, "weight_decay": wd, "lr_scale": scale}
              for params, wd in ((decayed, loss.weight_decay), (rest, 0.0))
              for scale, chosen in ((1.0, [p for p in params if id(p) not in scaled]),
                                    (config.theta_lr_scale, [p for p in params if id(p) in scaled]))
              if chosen]
    c = config
    kwargs = dict(lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0)
    try:
        optimizer = torch.optim.SGD(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.SGD(groups, foreach=True, **kwargs)
    if fuse and config.z_draws == 1:
        for m in guide.modules():
            if isinstance(m, HyperNetworks):
                m.fuse_sgd(optimizer)
    return optimizer


@contextlib.contextmanager
def _stop_requests() -> Iterator[dict]:
    """Turn SIGTERM/SIGINT into a flag checked between steps; a second SIGINT stops at once."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _rng_states(dist: Dist) -> list[torch.Tensor]:
    """Every rank's torch RNG state (they differ only with ``per_rank_z``)."""
    state = torch.get_rng_state()
    if not dist.active:
        return [state]
    states = [torch.empty_like(state) for _ in range(dist.world)]
    torch.distributed.all_gather(states, state)
    return states


def _host_rng_states() -> dict:
    """Python's and NumPy's global RNG states in a form ``weights_only`` loading accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}


def _set_host_rng_states(rng: dict) -> None:
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


def make_loss(config: TrainConfig, epoch: int = 0):
    """The training objective of ``config.method`` in epoch ``epoch`` (0-based; KL annealing
    depends on it): a Pyro loss with ``loss_and_logits``, its Gaussian prior left to the
    weight decay of :func:`make_optimizer`."""
    loss = METHODS[config.method].loss(config, epoch)
    loss.decay_in_optimizer = True  # see make_optimizer
    return loss


def train_step(model, guide, loss_fn, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, likelihood_weight: float = 1.0, precision: str = "fp32"
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on the mini-batch (x, y): returns the loss and the number classified right,
    as tensors on the device (reading them would synchronise host and device: the loop reads
    them every ``SYNC_EVERY`` steps). ``precision="bf16"`` runs the forward pass and the loss
    under bfloat16 autocast.

    A non-finite loss is left to the caller to detect (it then stops before checkpointing).
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, logits = loss_fn.loss_and_logits(model, guide, x, y,
                                               likelihood_weight=likelihood_weight)
    release_grads(model, guide)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(-1) == y).sum()


def _wrap(module: torch.nn.Module, config: TrainConfig, dist: Dist) -> torch.nn.Module:
    if not dist.active or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [torch.cuda.current_device()] if config.device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=device_ids)


def fit(config: TrainConfig | None, out: Path, resume: bool = False,
        progress: bool | None = None, data: ImageData | None = None) -> Run:
    """Train ``config`` into the run folder ``out`` (or continue the run there when ``resume``)."""
    out = Path(out)
    if resume:
        if not (out / CONFIG).is_file():
            raise FileNotFoundError(f"--resume {out}: not a run folder (no {CONFIG})")
        config = TrainConfig.load(out / CONFIG)
    elif (out / CONFIG).exists():
        raise FileExistsError(f"{out} already holds a run: pass --resume to continue it, "
                              "or choose another --out")
    own_fit = METHODS[config.validate().method].fit
    if own_fit is not None:  # e.g. an ensemble: one ordinary run per member
        return own_fit(config, out, resume, progress, data)
    dist = setup(config.validate().device)
    run = prepare(config, data)
    optimizer = make_optimizer(run.config, run.model, run.guide, fuse=not dist.active)
    state = load_checkpoint(out / CHECKPOINT) if resume else None
    if state is not None:
        if dist.is_main:
            remove_stale_temp_files(out / CHECKPOINT)
        _load_states(out, state, run, optimizer)
    if dist.active and config.per_rank_z:
        torch.manual_seed(config.seed * 100_003 + dist.rank)  # own z (and dropout) per rank
    # Pyro's argument checks read tensors back (a host-device sync per distribution) and would
    # trip over a NaN before the loop reports it: off while training
    with _stop_requests() as stop, pyro.validation_enabled(False):
        _loop(run, optimizer, state, dist, stop, out,
              show=dist.is_main and (progress is None or progress))
    return run


def _loop(run: Run, optimizer, state: dict | None, dist: Dist, stop: dict, out: Path,
          show: bool) -> None:
    config = run.config
    model, guide = _wrap(run.model, config, dist), _wrap(run.guide, config, dist)
    data_gen = torch.Generator().manual_seed(config.seed)
    lazy, cuda = is_lazy(run.data.train_x), torch.device(config.device).type == "cuda"
    x_all = run.data.train_x if lazy else _resident(run.data.train_x, config.device)
    y_all = run.data.train_y.to(config.device)
    steps = -(-len(y_all) // config.batch_size)
    last = len(y_all) - (steps - 1) * config.batch_size
    if dist.active and min(config.batch_size, last) < dist.world:
        raise ValueError(f"--batch-size {config.batch_size} with {len(y_all)} training items "
                         f"leaves a batch of {min(config.batch_size, last)} for {dist.world} "
                         "processes: every rank needs at least one item per step")
    history: list[dict] = []
    epoch, step, order, partial = 0, 0, None, [0.0, 0.0, 0.0, 0.0]
    if state is not None:
        history, epoch, step = list(state["history"]), int(state["epoch"]), int(state["step"])
        if step:
            order, partial = state["order"], list(state["partial"])
        data_gen.set_state(state["rng"]["data"])
        states = state["rng"]["torch"]  # one per rank of the run that wrote it
        torch.set_rng_state(states[dist.rank % len(states)])
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        _set_host_rng_states(state["rng"])

    def checkpoint(epoch: int, step: int, order, partial) -> None:
        rng = {"torch": _rng_states(dist), "data": data_gen.get_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
               **_host_rng_states()}
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint({
                "format": config.format, "epoch": epoch, "step": step, "history": history,
                "order": order if order is not None else torch.empty(0, dtype=torch.long),
                "partial": partial, "model": run.model.state_dict(),
                "guide": run.guide.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng}, out / CHECKPOINT)
            if not (out / CONFIG).exists():  # the run exists once config.json follows it
                config.save(out / CONFIG)

    while epoch < config.epochs:
        lr = config.lr_at(epoch)
        loss_fn = make_loss(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        run.model.train()
        run.guide.train()
        if order is None:
            order = torch.randperm(len(y_all), generator=data_gen)
        order_dev = to_device(order, config.device)  # the only copies: once per epoch
        order_x = order if lazy or x_all.device.type == "cpu" else order_dev
        if lazy:  # decoded and augmented by DataLoader workers, this rank's shard only
            positions = [dist.shard(torch.arange(s * config.batch_size,
                                                 min((s + 1) * config.batch_size, len(order))))
                         for s in range(step, steps)]
            images = train_batches(x_all, [order[p] for p in positions], positions, config.seed,
                                   epoch, config.workers, pin=cuda)
        pending: list = []  # (step, loss, correct, size) of steps not yet read back
        t0 = time.perf_counter() - partial[3]
        bar = tqdm(range(step, steps), initial=step, total=steps, leave=False,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show or None,
                   dynamic_ncols=True)
        for step in bar:
            lo, hi = step * config.batch_size, (step + 1) * config.batch_size
            index, size = order_dev[lo:hi], len(order[lo:hi])
            if lazy:
                x = run.normalizer(next(images))
            else:
                x = run.normalizer(x_all[order_x[lo:hi]], data_gen)  # whole global batch
            y = y_all[index]
            if dist.active:  # this rank's shard
                local = to_device(dist.shard(torch.arange(size)), config.device)
                x, y = (x, y[local]) if lazy else (x[local], y[local])
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if isinstance(run.guide, ImplicitGuide):
                run.guide.spread = z_spread(config, epoch, step, steps)
            loss, correct = train_step(model, guide, loss_fn, optimizer, x, y,
                                       likelihood_weight=len(y) * dist.world / size,
                                       precision=config.precision)
            pending.append((step, loss, correct, len(y)))
            stopping = dist.any(stop["signal"] is not None)[0]
            if stopping or len(pending) >= SYNC_EVERY or step == steps - 1:
                _flush(pending, partial, dist, epoch, steps, out)
                bar.set_postfix(loss=f"{partial[0] / partial[2]:.3f}",
                                acc=f"{partial[1] / partial[2]:.3f}")
            if stopping:
                partial[3] = time.perf_counter() - t0
                checkpoint(epoch, step + 1, order, partial)
                raise TrainingInterrupted(
                    f"stopped in epoch {epoch + 1} after step {step + 1}; checkpoint written: "
                    f"continue with `pyro-implicit train --resume {out}`")
        bar.close()
        totals = torch.tensor(partial[:3], dtype=torch.float64)
        if dist.active:
            torch.distributed.all_reduce(totals)
        record = {"epoch": epoch + 1, "lr": lr, "loss": (totals[0] / totals[2]).item(),
                  "train_error": 1 - (totals[1] / totals[2]).item(),
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        epoch, step, order, partial = epoch + 1, 0, None, [0.0, 0.0, 0.0, 0.0]
        checkpoint(epoch, 0, None, partial)
        if dist.is_main:
            (out / METRICS).write_text(json.dumps({"history": history}, indent=2) + "\n")
            if show:
                tqdm.write(f"epoch {record['epoch']}/{config.epochs}: loss {record['loss']:.4f} "
                           f"train error {record['train_error']:.4f} lr {lr:g} "
                           f"({record['seconds']:.1f}s)")


def _resident(x: torch.Tensor, device: str) -> torch.Tensor:
    """The in-memory training images on the training device when they fit in a quarter of
    its free memory (then batches are cut, augmented and normalised there), else on the host."""
    if torch.device(device).type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return x.to(device) if x.element_size() * x.nelement() <= free // 4 else x


def _flush(pending: list, partial: list, dist: Dist, epoch: int, steps: int, out: Path) -> None:
    """Read back the losses and correct counts of the ``pending`` steps (one host-device
    sync for all of them); raise at the first non-finite loss of any rank, else add them to the
    epoch's running sums ``partial`` in step order (as if read one step at a time)."""
    losses, corrects = torch.stack([torch.stack([p[1] for p in pending]).double(),
                                    torch.stack([p[2] for p in pending]).double()]).tolist()
    bad = next((p[0] for p, v in zip(pending, losses, strict=True) if not math.isfinite(v)),
               steps)
    if dist.active:
        first = torch.tensor([bad], dtype=torch.long)
        torch.distributed.all_reduce(first, op=torch.distributed.ReduceOp.MIN)
        bad = int(first)
    if bad < steps:
        raise FloatingPointError(
            f"non-finite loss in epoch {epoch + 1}, step {bad + 1} (global step "
            f"{epoch * steps + bad + 1}); the last good checkpoint is kept in {out}")
    for (_, _, _, size), value, correct in zip(pending, losses, corrects, strict=True):
        partial[0] += value * size
        partial[1] += int(correct)
        partial[2] += size
    pending.clear()


def load_run(out: Path, data: ImageData | None = None, device: str | None = None) -> Run:
    """Rebuild a trained run from its folder: config, data, model, guide and BN buffers
    (on ``device`` when given, e.g. a GPU-trained run on a CPU-only machine)."""
    out = Path(out)
    if not (out / CONFIG).is_file():
        raise FileNotFoundError(f"{out} is not a run folder (no {CONFIG})")
    config = TrainConfig.load(out / CONFIG, device)
    run = prepare(config, data)
    _load_states(out, load_checkpoint(out / CHECKPOINT), run)
    return run


def _load_states(out: Path, state: dict, run: Run, optimizer=None) -> None:
    """Restore model, guide (and optimiser) states; a mismatch is a clear ValueError."""
    try:
        run.model.load_state_dict(state["model"])
        run.guide.load_state_dict(state["guide"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
            for key in ("history", "epoch", "step", "rng"):
                state[key]  # noqa: B018 - presence check
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"{out / CHECKPOINT} does not match the run's configuration: "
                         f"{str(err).splitlines()[0]}") from err


if __name__ == "__main__":  # torchrun --nproc_per_node=K -m pyro_implicit.inference.train ...
    from .cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
