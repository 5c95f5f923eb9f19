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
import dataclasses
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

from pyro_implicit import ImplicitGuide
from pyro_implicit.hypernet import HyperNetworks, release_grads
from pyro_implicit.objective import unique_parameters

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import MEMORY, to_device
from .distributed import Dist, setup
from .ensemble import fit_members
from .folders import is_lazy, train_batches
from .images import ImageData
from .methods import METHODS, check_method, learning_rate, validate, z_spread
from .outputs import check_output_folder, write_json
from .runs import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    Run,
    TrainingInterrupted,
    build_run,
    check_new_run_folder,
    history,
    is_finished,
    load_run,
    load_states,
    locked,
    read_config,
    sync_metrics,
)

SYNC_EVERY = 50  # steps between reads of the loss sums (the only host-device syncs of a step)


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
               y: torch.Tensor, likelihood_weight: float = 1.0, precision: str = "fp32",
               clip: tuple[list[torch.Tensor], float] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on the mini-batch (x, y): returns the loss and the number classified right,
    as tensors on the device (reading them would synchronise host and device: the loop reads
    them every ``SYNC_EVERY`` steps). ``precision="bf16"`` runs the forward pass and the loss
    under bfloat16 autocast. ``clip`` (parameters, max norm): their gradients are scaled to
    that total norm at most before the update.

    A non-finite loss is left to the caller to detect (it then stops before checkpointing).
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, logits = loss_fn.loss_and_logits(model, guide, x, y,
                                               likelihood_weight=likelihood_weight)
    release_grads(model, guide)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(*clip)
    optimizer.step()
    return loss.detach(), (logits.argmax(-1) == y).sum()


def _wrap(module: torch.nn.Module, config: TrainConfig, dist: Dist) -> torch.nn.Module:
    if not dist.active or not any(p.requires_grad for p in module.parameters()):
        return module
    device_ids = [torch.cuda.current_device()] if config.device.startswith("cuda") else None
    return DistributedDataParallel(module, device_ids=device_ids)


def fit(config: TrainConfig | None, out: Path, resume: bool = False,
        progress: bool | None = None, data: ImageData | None = None) -> Run:
    """Train ``config`` into the run folder ``out`` (or continue the run there when ``resume``;
    ``config`` is then None: the saved one is used). ``data`` (in memory) replaces loading
    ``config.data``; data not loaded from a spec is recorded as ``data="memory"``, and must be
    handed to :func:`~.runs.load_run` again. The folder is locked while this process writes it."""
    out = Path(out)
    if resume:
        config = read_config(out)
    else:
        check_new_run_folder(out, members=METHODS[check_method(config.method)].trains_members)
        config = validate(_with_data_source(config, data))
        check_output_folder(out, "--out")
    if METHODS[config.method].trains_members:  # an ensemble: one ordinary run per member
        with _writing(out, setup(config.device)):
            return fit_members(config, out, progress, data, fit)
    if METHODS[config.method].post_hoc:  # fitted once to a finished run: nothing to continue
        if resume:
            return load_run(out, data, config=config)
        with _writing(out, setup(config.device)):
            return fit_post_hoc(config, out, data)
    dist = setup(config.device)
    with _writing(out, dist):
        run = build_run(config, data)
        optimizer = make_optimizer(run.config, run.model, run.guide, fuse=not dist.active)
        state = load_checkpoint(out / CHECKPOINT) if resume else None
        loop = _Loop(run, optimizer, dist, out)
        if state is not None:
            load_states(out, state, run, optimizer)
            loop.check_position(state)
            if dist.is_main and sync_metrics(out, list(state["history"])):
                print(f"pyro-implicit: {out / METRICS} did not match the checkpoint; rewritten "
                      "from its history", file=sys.stderr)
        if dist.active and config.per_rank_z:
            torch.manual_seed(config.seed * 100_003 + dist.rank)  # own z (and dropout) per rank
        # Pyro's argument checks read tensors back (a host-device sync per distribution) and
        # would trip over a NaN before the loop reports it: off while training
        with _stop_requests() as stop, pyro.validation_enabled(False):
            loop.train(state, stop, show=dist.is_main and (progress is None or progress))
    return run


def fit_post_hoc(config: TrainConfig, out: Path, data: ImageData | None = None) -> Run:
    """Fit the post-hoc method of ``config`` to the finished run ``config.from_run`` into the
    new run folder ``out``: its config is the source run's (method and ``from_run`` replaced,
    the source's path made absolute), its checkpoint the fitted model and guide, its
    metrics the source's history (its training)."""
    post_hoc = METHODS[config.method].post_hoc
    if config.from_run is None:
        raise ValueError(f"{config.method} is fitted post hoc to a finished {post_hoc.source} "
                         "run: pass --from RUN")
    source_dir = Path(config.from_run).resolve()
    source_config = read_config(source_dir, config.device)
    if source_config.method != post_hoc.source or not is_finished(source_dir):
        held = "an unfinished" if source_config.method == post_hoc.source else "a"
        raise ValueError(f"--from {config.from_run} holds {held} {source_config.method} run; "
                         f"{config.method} is fitted to a finished {post_hoc.source} run")
    config = validate(dataclasses.replace(source_config, method=config.method,
                                          from_run=str(source_dir)))
    source = load_run(source_dir, data, config=source_config)
    run = build_run(config, source.data)
    post_hoc.fit(source.model.net, run.model, run.guide, source.labelled_batches())
    done = history(source_dir)
    save_checkpoint({"format": config.format, "epoch": config.epochs, "step": 0, "history": done,
                     "model": run.model.state_dict(), "guide": run.guide.state_dict(),
                     "config": dataclasses.asdict(config)}, out / CHECKPOINT)
    write_json(out / METRICS, {"history": done})
    config.save(out / CONFIG)
    return run


def _writing(out: Path, dist: Dist) -> contextlib.AbstractContextManager:
    """The run folder's write lock, held by the one process that writes it (rank 0)."""
    return locked(out) if dist.is_main else contextlib.nullcontext()


def _with_data_source(config: TrainConfig, data: ImageData | None) -> TrainConfig:
    """``config`` recording where ``data`` came from: its spec must be ``config.data``; data
    built in memory (no spec) is recorded as ``memory``."""
    if data is None:
        return config
    if data.spec is None:
        return dataclasses.replace(config, data=MEMORY)
    if data.spec != config.data:
        raise ValueError(f"data= was loaded from {data.spec!r} but config.data is "
                         f"{config.data!r}: they must name the same data")
    return config


@dataclass
class _Tally:
    """An epoch's running sums so far: loss times items, items right, items seen, seconds
    (checkpointed as a list of the four, to resume mid-epoch)."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0

    def as_list(self) -> list:
        return [self.loss, self.correct, self.seen, self.seconds]


class _Loop:
    """The training loop of one run: the epochs from a (restored) position, each its batches
    in a seeded order, with a checkpoint after every epoch and on a stop request."""

    def __init__(self, run: Run, optimizer: torch.optim.Optimizer, dist: Dist, out: Path):
        config = self.config = run.config
        self.run, self.optimizer, self.dist, self.out = run, optimizer, dist, out
        self.model, self.guide = _wrap(run.model, config, dist), _wrap(run.guide, config, dist)
        self.data_gen = torch.Generator().manual_seed(config.seed)
        self.lazy = is_lazy(run.data.train_x)
        self.x_all = run.data.train_x if self.lazy else _resident(run.data.train_x, config.device)
        self.y_all = run.data.train_y.to(config.device)
        n, size = len(self.y_all), config.batch_size
        self.steps = -(-n // size)
        last = n - (self.steps - 1) * size
        if dist.active and min(size, last) < dist.world:
            raise ValueError(f"--batch-size {size} with {n} training items leaves a batch of "
                             f"{min(size, last)} for {dist.world} processes: every rank needs "
                             "at least one item per step")
        self.history: list[dict] = []

    def restore(self, state: dict | None) -> tuple[int, int, torch.Tensor | None, _Tally]:
        """The position (epoch, step, data order, tally) of a checked ``state``
        (:meth:`check_position`), its RNG states set."""
        if state is None:
            return 0, 0, None, _Tally()
        self.history = list(state["history"])
        epoch, step = int(state["epoch"]), int(state["step"])
        order, tally = (state["order"], _Tally(*state["partial"])) if step else (None, _Tally())
        self.data_gen.set_state(state["rng"]["data"])
        states = state["rng"]["torch"]  # one per rank of the run that wrote it
        torch.set_rng_state(states[self.dist.rank % len(states)])
        if state["rng"].get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        _set_host_rng_states(state["rng"])
        return epoch, step, order, tally

    def check_position(self, state: dict) -> None:
        """Refuse a checkpoint whose position (epoch, step, data order, running sums, history)
        could not have been written by this run's training."""
        epoch, step, history = state["epoch"], state["step"], state["history"]
        n = len(self.y_all)
        problem = None
        if not isinstance(epoch, int) or not 0 <= epoch <= self.config.epochs:
            problem = f"epoch {epoch!r} is not in 0..{self.config.epochs}"
        elif not isinstance(step, int) or not 0 <= step <= self.steps or (
                step and epoch == self.config.epochs):
            problem = f"step {step!r} of epoch {epoch} is not a position of {self.steps} steps"
        elif [h.get("epoch") for h in history] != list(range(1, epoch + 1)):
            problem = f"its history does not list epochs 1..{epoch}"
        elif step:
            order, partial = state["order"], state["partial"]
            if not (isinstance(order, torch.Tensor) and order.shape == (n,)
                    and torch.equal(order.sort().values, torch.arange(n))):
                problem = f"its data order is not a permutation of the {n} training items"
            elif not (len(partial) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v)
                                                and v >= 0 for v in partial)):
                problem = f"its running sums {partial!r} are not 4 finite numbers >= 0"
        if problem:
            raise ValueError(f"{self.out / CHECKPOINT} is inconsistent with its run: {problem} "
                             "(not written by this run's training)")

    def checkpoint(self, epoch: int, step: int, order: torch.Tensor | None,
                   tally: _Tally) -> None:
        """Write the exact position (rank 0), and config.json after the first checkpoint."""
        rng = {"torch": _rng_states(self.dist), "data": self.data_gen.get_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
               **_host_rng_states()}
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        save_checkpoint({
            "format": self.config.format, "epoch": epoch, "step": step,
            "history": self.history,
            "order": order if order is not None else torch.empty(0, dtype=torch.long),
            "partial": tally.as_list(), "model": self.run.model.state_dict(),
            "guide": self.run.guide.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": rng, "config": dataclasses.asdict(self.config)}, self.out / CHECKPOINT)
        if not (self.out / CONFIG).exists():  # the run exists once config.json follows it
            self.config.save(self.out / CONFIG)

    def batches(self, epoch: int, first: int, order: torch.Tensor) -> Iterator[tuple]:
        """(step, x, y, global batch size) for the steps from ``first`` of an epoch in
        ``order``: this rank's shard, augmented (in step order, from the data generator)."""
        config, dist, size = self.config, self.dist, self.config.batch_size
        order_dev = to_device(order, config.device)  # the only copies: once per epoch
        order_x = order if self.lazy or self.x_all.device.type == "cpu" else order_dev
        if self.lazy:  # decoded and augmented by DataLoader workers, this rank's shard only
            positions = [dist.shard(torch.arange(s * size, min((s + 1) * size, len(order))))
                         for s in range(first, self.steps)]
            images = train_batches(self.x_all, [order[p] for p in positions], positions,
                                   config.seed, epoch, config.workers,
                                   pin=torch.device(config.device).type == "cuda")
        for step in range(first, self.steps):
            lo, hi = step * size, (step + 1) * size
            index, total = order_dev[lo:hi], len(order[lo:hi])
            if self.lazy:
                x = self.run.normalizer(next(images))
            else:
                x = self.run.normalizer(self.x_all[order_x[lo:hi]], self.data_gen)
            y = self.y_all[index]
            if dist.active:  # this rank's shard
                local = to_device(dist.shard(torch.arange(total)), config.device)
                x, y = (x, y[local]) if self.lazy else (x[local], y[local])
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield step, x, y, total

    def train(self, state: dict | None, stop: dict, show: bool) -> None:
        """Train from ``state``'s position (or the start) to the last epoch."""
        config, dist = self.config, self.dist
        epoch, first, order, tally = self.restore(state)
        after_step = METHODS[config.method].after_step
        clip = METHODS[config.method].clip
        clip = clip(config, self.run.guide) if clip is not None else None
        while epoch < config.epochs:
            lr = learning_rate(config, epoch)
            loss_fn = make_loss(config, epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            self.run.model.train()
            self.run.guide.train()
            if order is None:
                order = torch.randperm(len(self.y_all), generator=self.data_gen)
            pending: list = []  # (step, loss, correct, size) of steps not yet read back
            t0 = time.perf_counter() - tally.seconds
            bar = tqdm(total=self.steps, initial=first, leave=False,
                       desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show or None,
                       dynamic_ncols=True)
            for step, x, y, total in self.batches(epoch, first, order):
                if isinstance(self.run.guide, ImplicitGuide):
                    self.run.guide.spread = z_spread(config, epoch, step, self.steps)
                loss, correct = train_step(self.model, self.guide, loss_fn, self.optimizer, x,
                                           y, likelihood_weight=len(y) * dist.world / total,
                                           precision=config.precision, clip=clip)
                if after_step is not None:
                    after_step(config, self.run.guide, epoch, step, self.steps)
                pending.append((step, loss, correct, len(y)))
                bar.update()
                stopping = dist.any(stop["signal"] is not None)[0]
                if stopping or len(pending) >= SYNC_EVERY or step == self.steps - 1:
                    _flush(pending, tally, dist, epoch, self.steps, self.out)
                    bar.set_postfix(loss=f"{tally.loss / tally.seen:.3f}",
                                    acc=f"{tally.correct / tally.seen:.3f}")
                if stopping:
                    tally.seconds = time.perf_counter() - t0
                    self.checkpoint(epoch, step + 1, order, tally)
                    raise TrainingInterrupted(
                        f"stopped in epoch {epoch + 1} after step {step + 1}; checkpoint "
                        f"written: continue with `pyro-implicit train --resume {self.out}`")
            bar.close()
            self.end_epoch(epoch, lr, tally, time.perf_counter() - t0, show,
                           loss_fn.prior_value(self.run.model, self.run.guide))
            epoch, first, order, tally = epoch + 1, 0, None, _Tally()
            self.checkpoint(epoch, 0, None, tally)
            if dist.is_main:
                write_json(self.out / METRICS, {"history": self.history})

    def end_epoch(self, epoch: int, lr: float, tally: _Tally, seconds: float, show: bool,
                  prior: float) -> None:
        """Add the epoch's record (summed over ranks) to the history, and print it: ``loss``
        is the objective without the Gaussian prior (SGD's weight decay applies it; the NLL
        per image for MAP and the hypernet), ``prior`` that term at the epoch's end."""
        totals = torch.tensor([tally.loss, tally.correct, tally.seen], dtype=torch.float64)
        if self.dist.active:
            torch.distributed.all_reduce(totals)
        record = {"epoch": epoch + 1, "lr": lr, "loss": (totals[0] / totals[2]).item(),
                  "train_error": 1 - (totals[1] / totals[2]).item(), "seconds": seconds,
                  "prior": prior}
        self.history.append(record)
        if show:
            tqdm.write(f"epoch {record['epoch']}/{self.config.epochs}: loss "
                       f"{record['loss']:.4f} (+ prior {prior:.4f}) train error "
                       f"{record['train_error']:.4f} lr {lr:g} ({record['seconds']:.1f}s)")


def _resident(x: torch.Tensor, device: str) -> torch.Tensor:
    """The in-memory training images on the training device when they fit in a quarter of
    its free memory (then batches are cut, augmented and normalised there), else on the host."""
    if torch.device(device).type != "cuda":
        return x
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return x.to(device) if x.element_size() * x.nelement() <= free // 4 else x


def _flush(pending: list, tally: _Tally, dist: Dist, epoch: int, steps: int, out: Path) -> None:
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
        tally.loss += value * size
        tally.correct += int(correct)
        tally.seen += size
    pending.clear()
