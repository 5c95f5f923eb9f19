"""Posterior draws of individual weights and their correlations (the paper's Sec. 5 figures).

A weight is one scalar of a conv kernel inside a residual block, named ``site[i,j,k,l]`` after
its kernel (a model site for a hypernetwork, an ordinary parameter for a point estimate). Pairs
are drawn at random either within one residual block or across two blocks; the mean |Pearson r|
of each kind, over posterior draws, is what the paper reports per z-sharing strategy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..guide import PosteriorGuide
from ..model import BayesianNetwork

PAIR_KINDS = ("within", "across")
_LABEL = re.compile(r"^(?P<site>[^\[\]]+)\[(?P<index>\d+(?:\s*,\s*\d+)*)\]$")


@dataclass(frozen=True)
class WeightRef:
    """One scalar weight: a kernel (site name) and a position in it."""

    site: str
    index: tuple[int, ...]

    @property
    def label(self) -> str:
        return f"{self.site}[{','.join(map(str, self.index))}]"

    @classmethod
    def parse(cls, text: str) -> WeightRef:
        """``"stage1.0.conv1.weight[3,1,0,2]"`` -> WeightRef; a clear ValueError otherwise."""
        match = _LABEL.match(text.strip())
        if match is None:
            raise ValueError(f"weight {text!r} is not of the form SITE[i,j,...], e.g. "
                             "stage1.0.conv1.weight[0,0,1,1]")
        return cls(match["site"], tuple(int(i) for i in match["index"].split(",")))


@dataclass(frozen=True)
class WeightLayout:
    """The weights a posterior varies: residual block -> kernel names, and each kernel's shape.

    For a hypernetwork these are the model's generated sites; for a point estimate (no generated
    sites) the same kernels, read from the network's ``residual_blocks()``, are parameters.
    """

    blocks: dict[str, list[str]]
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def of(cls, model: BayesianNetwork) -> WeightLayout:
        if model.sites:
            return cls(model.blocks, {s.name: s.shape for s in model.sites})
        if not hasattr(model.net, "residual_blocks"):
            raise ValueError(f"{type(model.net).__name__} declares no residual_blocks(): "
                             "there are no block weights to analyse")
        blocks = model.net.residual_blocks()
        shapes = {name: tuple(model.net.get_parameter(name).shape)
                  for names in blocks.values() for name in names}
        return cls(blocks, shapes)

    def block_of(self, site: str) -> str:
        for block, names in self.blocks.items():
            if site in names:
                return block
        raise ValueError(f"unknown weight site {site!r}; sites are kernels of residual blocks, "
                         f"e.g. {next(iter(self.shapes), '(none)')}")

    def check(self, ref: WeightRef) -> WeightRef:
        """Return ``ref`` if it names a weight of this layout, else raise a ValueError."""
        self.block_of(ref.site)
        shape = self.shapes[ref.site]
        if len(ref.index) != len(shape) or any(
                not 0 <= i < n for i, n in zip(ref.index, shape, strict=True)):
            raise ValueError(f"weight {ref.label} is out of range: {ref.site} has shape "
                             f"{list(shape)}")
        return ref

    def block_weight(self, block: str, position: int) -> WeightRef:
        """The ``position``-th scalar of ``block``, counting through its kernels in order."""
        for name in self.blocks[block]:
            size = math.prod(self.shapes[name])
            if position < size:
                index = np.unravel_index(position, self.shapes[name])
                return WeightRef(name, tuple(int(i) for i in index))
            position -= size
        raise IndexError(position)

    def block_size(self, block: str) -> int:
        """How many scalar weights ``block`` holds."""
        return sum(math.prod(self.shapes[name]) for name in self.blocks[block])


@dataclass(frozen=True)
class WeightSelection:
    """Scalar weights to draw, with their blocks and the random pairs among them.

    ``pairs[kind]`` is a (P, 2) array of indices into ``refs`` for ``kind`` in ``PAIR_KINDS``.
    """

    refs: tuple[WeightRef, ...]
    blocks: tuple[str, ...]
    pairs: dict[str, np.ndarray]

    @property
    def labels(self) -> list[str]:
        return [ref.label for ref in self.refs]


def select_weights(
    layout: WeightLayout,
    num_pairs: int = 1000,
    weights: Iterable[str | WeightRef] = (),
    seed: int = 0,
) -> WeightSelection:
    """``num_pairs`` random pairs within one block and as many across two blocks, plus ``weights``.

    Within: a block uniformly at random (among blocks with two weights or more), then two
    distinct scalars uniformly among its kernels' entries. Across: two distinct blocks uniformly,
    one scalar uniformly from each. With a single block there are no across pairs.
    """
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    rng = np.random.default_rng(seed)
    sizes = {block: layout.block_size(block) for block in layout.blocks}
    refs: dict[WeightRef, int] = {}

    def index(ref: WeightRef) -> int:
        return refs.setdefault(ref, len(refs))

    for w in weights:
        index(layout.check(WeightRef.parse(w) if isinstance(w, str) else w))
    pairs = {kind: np.zeros((0, 2), dtype=np.int64) for kind in PAIR_KINDS}
    candidates = [b for b, n in sizes.items() if n >= 2]
    if candidates and num_pairs:
        chosen = rng.choice(len(candidates), num_pairs)
        pairs["within"] = np.array([
            [index(layout.block_weight(candidates[b], int(p)))
             for p in rng.choice(sizes[candidates[b]], 2, replace=False)] for b in chosen])
    if len(sizes) >= 2 and num_pairs:
        names = list(sizes)
        pairs["across"] = np.array([
            [index(layout.block_weight(names[b], int(rng.integers(sizes[names[b]])))) for b in two]
            for two in (rng.choice(len(names), 2, replace=False) for _ in range(num_pairs))])
    ordered = list(refs)
    return WeightSelection(tuple(ordered), tuple(layout.block_of(r.site) for r in ordered), pairs)


@torch.no_grad()
def draw_weights(
    model: BayesianNetwork,
    guide: PosteriorGuide,
    refs: Sequence[WeightRef],
    num_draws: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Values of ``refs`` in ``num_draws`` posterior draws, shape (draws, len(refs)), and the
    latents z of those draws (None for a point estimate, which has exactly one draw).

    Latents come from successive ``guide.sample_latent()`` calls, the same sequence
    :func:`pyro_implicit.freeze_posterior` draws after the same seed.
    """
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws}")
    point = guide.is_point
    latents = torch.stack([guide.sample_latent() for _ in range(1 if point else num_draws)])
    by_site: dict[str, tuple[list[int], list[tuple[int, ...]]]] = {}
    for col, ref in enumerate(refs):
        cols, index = by_site.setdefault(ref.site, ([], []))
        cols.append(col)
        index.append(ref.index)
    gather = {site: (torch.tensor(cols), tuple(torch.tensor(index).T))
              for site, (cols, index) in by_site.items()}
    out = torch.empty(len(latents), len(refs))
    for i, z in enumerate(latents):
        tensors = guide.weights(z)
        for site, (cols, index) in gather.items():
            value = tensors[site] if site in tensors else model.net.get_parameter(site)
            out[i, cols] = value[index].float().cpu()
    return out, (None if point else latents)


def abs_correlations(draws: np.ndarray | torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """|Pearson r| over draws (rows) of each pair of columns; NaN where a column is constant."""
    x = np.asarray(draws, dtype=np.float64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    x = x - x.mean(0)
    norm = np.sqrt((x * x).sum(0))
    a, b = pairs[:, 0], pairs[:, 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x[:, a] * x[:, b]).sum(0) / (norm[a] * norm[b])
    return np.abs(r)


def independent_level(num_draws: int) -> float:
    """E|r| of two independent Gaussian weights over ``num_draws`` draws: the level a mean |r|
    has to clear to show correlation (about 0.025 at 1000 draws, 0.2 at 16)."""
    if num_draws < 3:
        return math.nan
    a = (num_draws - 2) / 2
    log_beta = math.lgamma(0.5) + math.lgamma(a) - math.lgamma(a + 0.5)
    return 2 / (num_draws - 2) / math.exp(log_beta)


def mean_abs_correlation(draws: np.ndarray | torch.Tensor, pairs: np.ndarray) -> float | None:
    """Mean |Pearson r| over ``pairs`` (constant weights skipped); None when nothing is defined."""
    r = abs_correlations(draws, pairs)
    r = r[np.isfinite(r)]
    return float(r.mean()) if len(r) and len(np.asarray(draws)) >= 3 else None
