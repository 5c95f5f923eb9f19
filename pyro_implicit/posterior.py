"""Frozen posterior samples for Bayesian model averaging with Pyro.

A :class:`FrozenPosterior` keeps N latent draws (the z of each weight sample, not the weights)
and the BatchNorm statistics recalibrated for each, as buffers: its ``state_dict`` holds them.
As a guide it emits sample i's weights g(z_i; theta) and BN statistics:

- under ``Predictive(model, guide=frozen, num_samples=len(frozen))``, draw i is sample i, in
  every call whatever came before (Predictive's two shape-probing runs get sample 0); any other
  ``num_samples``, ``parallel=True`` or a model in train mode is refused with the fix;
- anywhere else each call emits one of the N samples, drawn uniformly at random.

:func:`predict_probs` and :func:`model_average` do what Predictive does for each sample —
trace the frozen guide, replay the model on it (``poutine.replay``) and read the ``logits``
site — without Predictive's two extra probing forwards per call and without stacking N weight
sets: one weight set exists at a time, generated once per sample however many batches it
sees, and the model runs in eval mode so its own running statistics are never touched.

Pyro's param store and the modules can disagree: ``pyro.get_param_store().load()`` after the
modules were built leaves them computing with their own values. The averaging functions warn
when that happens; :func:`sync_param_store` is the fix.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import chain
from typing import Literal

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import predictive as pyro_predictive
from pyro.nn import PyroModule
from pyro.params.param_store import param_with_module_name
from torch import nn
from tqdm.auto import tqdm

from .batchnorm import recalibrate_bn
from .model import BayesianNetwork, batchnorm_layers

# Predictive tells a guide neither which draw it is making nor how many it will make; its
# Pyro 1.9 functions' frames do (pyproject pins pyro-ppl < 1.10; tests pin the behaviour)
_PREDICTIVE_CODE = pyro_predictive._predictive.__code__
_SEQUENTIAL_CODE = pyro_predictive._predictive_sequential.__code__


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode for the block, then restore every submodule's own mode."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, mode in saved:
            m.training = mode


def _pyro_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _param_store_names(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(param store name, parameter) of every parameter of a PyroModule, named as PyroModule
    registers them: its own and its PyroModule children's by their dotted Pyro names, those of a
    plain child through ``pyro.module`` (``net$$$stem.weight``)."""
    prefix = module._pyro_name
    for key, param in module.named_parameters(recurse=False):
        yield _pyro_name(prefix, key), param
    for key, child in module.named_children():
        if isinstance(child, PyroModule):
            yield from _param_store_names(child)
        else:
            for sub, param in child.named_parameters():
                yield param_with_module_name(_pyro_name(prefix, key), sub), param


def _diverging(modules: Iterable[nn.Module]) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
    """(name, parameter, store tensor) where Pyro's param store holds another tensor under the
    name of a parameter of ``modules`` (PyroModules; none in module-local param mode)."""
    if pyro.settings.get("module_local_params"):
        return []
    stored = dict(pyro.get_param_store().named_parameters())
    return [(name, param, stored[name]) for module in modules if isinstance(module, PyroModule)
            for name, param in _param_store_names(module)
            if name in stored and stored[name] is not param]


def sync_param_store(*modules: nn.Module,
                     source: Literal["store", "modules"] = "store") -> list[str]:
    """Make Pyro's param store and ``modules`` share one tensor per parameter name again, and
    return the names that differed.

    ``source="store"``: the modules take the store's values, which is what
    ``pyro.get_param_store().load()`` into freshly built modules needs (the module counterpart
    of ``pyro.module(..., update_module_params=True)``; SVI trains the store's tensors, the
    modules compute with their own). ``source="modules"``: the store's entries are replaced by
    the modules' parameters (:func:`pyro_implicit.load` does this). Either way the modules keep
    their parameter objects, so optimisers built on them stay valid. The store holds no
    BatchNorm buffers: recalibrate them (``freeze_posterior(..., batches=...)``) or save with
    :func:`pyro_implicit.save`, which keeps everything.
    """
    if source not in ("store", "modules"):
        raise ValueError(f"source must be 'store' or 'modules', got {source!r}")
    store = pyro.get_param_store()
    pairs = _diverging(modules)
    for name, param, value in pairs if source == "store" else ():
        if value.shape != param.shape:
            raise ValueError(
                f"the param store's {name!r} has shape {tuple(value.shape)}, the module's "
                f"parameter {tuple(param.shape)}: the store holds another model's parameters; "
                "call pyro.clear_param_store() before building this one")
    for name, param, value in pairs:
        if source == "store":
            with torch.no_grad():
                param.copy_(value)
        del store[name]
        store[name] = param
    return [name for name, _, _ in pairs]


PARAM_STORE_WARNING = (
    "Pyro's param store holds other values than the model/guide under their parameters' "
    "names; they predict with their own values. After pyro.get_param_store().load(), call "
    "pyro_implicit.sync_param_store(model, guide) before predicting or training (the store has "
    "no BatchNorm statistics: recalibrate them with freeze_posterior(..., batches=...), or save "
    "with pyro_implicit.save, which keeps everything). If the store holds another model's "
    "parameters, SVI would train those: call pyro.clear_param_store() before building this one")


def _check_param_store(*modules: nn.Module) -> None:
    """Warn (one constant message, so once per call site) when the param store holds other
    values than ``modules`` under their names; values are compared only where the tensors are
    not the same, normally nowhere."""
    if any(value.shape != param.shape or not torch.equal(value.to(param.device), param)
           for _, param, value in _diverging(modules)):
        warnings.warn(PARAM_STORE_WARNING, UserWarning, stacklevel=2)


def _predictive_draw() -> tuple[int | None, int, bool] | None:
    """If Pyro's ``Predictive`` is running the caller: (the index of its draw, None in its
    shape-probing runs; its ``num_samples``; its ``parallel``). None elsewhere."""
    frame, index = sys._getframe(2), None
    while frame is not None:
        if frame.f_code is _SEQUENTIAL_CODE:
            index = frame.f_locals["i"]
        elif frame.f_code is _PREDICTIVE_CODE:
            return index, frame.f_locals["num_samples"], frame.f_locals["parallel"]
        frame = frame.f_back
    return None


def _set_buffer(root: nn.Module, name: str, value: torch.Tensor) -> None:
    """Register ``value`` as the buffer ``name`` (dotted) of ``root``, adding plain submodules."""
    *path, leaf = name.split(".")
    module = root
    for part in path:
        if part not in module._modules:
            module.add_module(part, nn.Module())
        module = module._modules[part]
    module.register_buffer(leaf, value)


class FrozenPosterior(PyroModule):
    """N fixed posterior samples of ``guide`` (latents + per-sample BN statistics), as a guide.

    ``state_dict()`` holds ``latents`` (N, *latent_shape) and ``bn.<site>`` (N, *stat_shape) per
    BN statistic site (theta is saved with the guide); :meth:`from_state_dict` rebuilds a
    posterior of any N from one. ``model`` (optional) lets ``Predictive`` refuse to run it in
    train mode.
    """

    def __init__(self, guide: PyroModule, latents: torch.Tensor,
                 bn_stats: Mapping[str, torch.Tensor], model: BayesianNetwork | None = None):
        super().__init__()
        if latents.shape[0] < 1:
            raise ValueError("a frozen posterior needs at least one sample")
        for name, value in bn_stats.items():
            if value.shape[0] != latents.shape[0]:
                raise ValueError(
                    f"{name}: {value.shape[0]} statistics for {latents.shape[0]} samples")
        # references, not submodules: theta is saved with the guide, the network with the model
        self._guide = (guide,)
        self._model = (model,)
        self.register_buffer("latents", latents)
        self.bn = nn.Module()
        for name, value in bn_stats.items():
            _set_buffer(self.bn, name, value)
        self._bn_names = list(bn_stats)
        self._cache: tuple[tuple, dict[str, torch.Tensor]] | None = None

    @classmethod
    def from_state_dict(cls, guide: PyroModule, state: Mapping[str, torch.Tensor],
                        model: BayesianNetwork | None = None) -> FrozenPosterior:
        """The frozen posterior whose ``state_dict()`` is ``state``, of whatever size."""
        if "latents" not in state:
            raise ValueError("not a FrozenPosterior state dict: it has no 'latents'")
        stats = {key.removeprefix("bn."): v for key, v in state.items() if key.startswith("bn.")}
        return cls(guide, state["latents"], stats, model)

    @property
    def guide(self) -> PyroModule:
        return self._guide[0]

    @property
    def model(self) -> BayesianNetwork | None:
        return self._model[0]

    @property
    def bn_stats(self) -> dict[str, torch.Tensor]:
        """BN statistic site -> its values for every sample, shape (N, *stat_shape)."""
        return {name: self.bn.get_buffer(name) for name in self._bn_names}

    def __len__(self) -> int:
        return self.latents.shape[0]

    def subset(self, start: int, stop: int) -> FrozenPosterior:
        """Samples ``start:stop`` as a frozen posterior of their own."""
        return FrozenPosterior(self.guide, self.latents[start:stop].clone(),
                               {k: v[start:stop].clone() for k, v in self.bn_stats.items()},
                               self.model)

    def sample_weights(self, index: int) -> dict[str, torch.Tensor]:
        """Generated kernels and BN statistics of sample ``index``, keyed by model site name.

        The last sample's kernels are kept (until the guide's or this posterior's tensors
        change), so evaluating one sample on many batches generates them once.
        """
        tensors = chain(self.guide.parameters(), self.guide.buffers(), self.buffers())
        key = (index, *(t._version for t in tensors))
        if self._cache is None or self._cache[0] != key:
            weights = dict(self.guide.weights(self.latents[index]))
            weights.update({k: v[index] for k, v in self.bn_stats.items()})
            self._cache = (key, weights)
        return dict(self._cache[1])

    def emit(self, index: int) -> dict[str, torch.Tensor]:
        """The guide's sample statements for sample ``index`` (z, kernels, BN statistics)."""
        z = self.latents[index]
        pyro.sample("z", dist.Delta(z, event_dim=z.dim()), infer={"is_auxiliary": True})
        tensors = self.sample_weights(index)
        for name, value in tensors.items():
            pyro.sample(name, dist.Delta(value, event_dim=value.dim()))
        return tensors

    def _check_predictive(self, num_samples: int, parallel: bool) -> None:
        """Refuse a ``Predictive`` run that would not average these N samples each once."""
        if num_samples != len(self):
            raise ValueError(
                f"Predictive(num_samples={num_samples}) over a FrozenPosterior of {len(self)} "
                f"samples: draw i is frozen sample i, so pass num_samples=len(frozen) "
                f"(= {len(self)}); for the first k samples use frozen.subset(0, k), for more "
                "freeze more with freeze_posterior")
        if parallel:
            raise ValueError("Predictive(parallel=True) would stack all N weight sets at once; "
                             "a FrozenPosterior needs parallel=False (the default)")
        if self.model is not None and self.model.training:
            raise ValueError(
                "Predictive would run the model in train mode: BatchNorm would normalise by "
                "batch statistics, ignoring the frozen ones, and overwrite its running "
                "statistics (2 probing runs + 1 per sample). Call model.eval() first, or use "
                "model_average / predict_probs, which do")
        _check_param_store(*(m for m in (self.guide, self.model) if m is not None))

    def forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        draw = _predictive_draw()
        if draw is None:
            return self.emit(int(torch.randint(len(self), ())))
        index, num_samples, parallel = draw
        if index is None:  # a shape probe: any sample has the shapes
            self._check_predictive(num_samples, parallel)
            index = 0
        return self.emit(index)


def _input_batches(batches: Callable[[], Iterable] | Iterable) -> Callable[[], Iterator]:
    """``batches`` as a function giving a fresh pass of input tensors. It may be such a function
    or a re-iterable (a list, a DataLoader), yielding tensors or (x, y, ...) pairs."""
    if isinstance(batches, torch.Tensor):
        raise TypeError("batches must give batches, not be one tensor: pass [x] for one batch")
    if isinstance(batches, Iterator):
        raise TypeError("batches is a one-shot iterator (a generator?), which the first sample "
                        "would exhaust: pass a list, a DataLoader, or a function returning a "
                        "fresh iterable")
    make = batches if callable(batches) else lambda: batches
    return lambda: (b[0] if isinstance(b, tuple | list) else b for b in make())


@torch.no_grad()
def freeze_posterior(
    model: BayesianNetwork,
    guide: PyroModule,
    num_samples: int,
    batches: Callable[[], Iterable] | Iterable | None = None,
    num_batches: int | None = None,
    progress: bool | None = False,
    distributed: bool = False,
) -> FrozenPosterior:
    """Draw ``num_samples`` latents from ``guide`` and recalibrate BN statistics for each.

    ``batches`` gives training inputs (augmentation off) for each recalibration pass: a
    DataLoader or list of inputs or (x, y) pairs, or a function returning a fresh such
    iterable; ``num_batches=None`` uses one full pass, as the paper. Without ``batches`` (or
    without BN) the network's own running statistics are frozen with every sample. The
    network's buffers are left as they were. ``distributed`` shares each recalibration pass
    among the ranks of the process group (all ranks must draw the same latents, i.e. share the
    RNG seed).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    inputs = None if batches is None else _input_batches(batches)
    _check_param_store(model, guide)
    latents = torch.stack([guide.sample_latent() for _ in range(num_samples)])
    net = model.net
    buffers = {f"{n}.{k}": b for n, bn in batchnorm_layers(net) for k, b in bn.named_buffers()}
    saved = {name: b.clone() for name, b in buffers.items()}
    per_sample: list[dict[str, torch.Tensor]] = []
    try:
        for z in tqdm(latents, desc="BN recalibration", leave=False,
                      disable=None if progress is None else not progress):
            if inputs is None or not buffers:
                per_sample.append({name: saved[name] for name in model.bn_sites})
                continue
            weights = guide.weights(z)
            stats = recalibrate_bn(net, inputs(), lambda x, w=weights: model.logits(x, w),
                                   num_batches, distributed)
            per_sample.append(stats)
    finally:
        for name, value in saved.items():
            buffers[name].copy_(value)
    bn_stats = {name: torch.stack([s[name] for s in per_sample]) for name in model.bn_sites}
    return FrozenPosterior(guide, latents, bn_stats, model)


@torch.no_grad()
def sample_logits(model: BayesianNetwork, posterior: FrozenPosterior, index: int,
                  x: torch.Tensor) -> torch.Tensor:
    """Logits of frozen sample ``index`` on ``x``: the model replayed on the guide's trace.

    Call it with the model in eval mode (see :func:`eval_mode`), as :func:`predict_probs` does.
    """
    guide_trace = poutine.trace(posterior.emit).get_trace(index)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    return model_trace.nodes["logits"]["value"]


@torch.no_grad()
def predict_probs(model: BayesianNetwork, posterior: FrozenPosterior,
                  x: torch.Tensor) -> torch.Tensor:
    """Per-sample class probabilities, shape (N, batch, classes)."""
    _check_param_store(model, posterior.guide)
    with eval_mode(model):
        return torch.stack([sample_logits(model, posterior, i, x).softmax(-1)
                            for i in range(len(posterior))])


@torch.no_grad()
def model_average(model: BayesianNetwork, posterior: FrozenPosterior,
                  x: torch.Tensor) -> torch.Tensor:
    """Bayesian model average (1/N) sum_n softmax(F(x; w_n)), shape (batch, classes),
    streaming over the samples."""
    _check_param_store(model, posterior.guide)
    total = None
    with eval_mode(model):
        for i in range(len(posterior)):
            probs = sample_logits(model, posterior, i, x).softmax(-1)
            total = probs if total is None else total + probs
    return total / len(posterior)
