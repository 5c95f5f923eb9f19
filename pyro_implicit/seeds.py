"""Seeds as latents: a posterior sample stored as one int64, its noise regenerated on demand.

Guides whose draws are large (a full Gaussian weight set, a stream of dropout masks) keep a seed
per sample instead, so that a :class:`~pyro_implicit.FrozenPosterior` of N samples holds N
numbers and the same seed always gives back the same sample.
"""

from __future__ import annotations

import torch

SEED_RANGE = 2**62


def draw_seed() -> torch.Tensor:
    """A fresh seed from torch's global RNG (so ``pyro.set_rng_seed`` fixes it), shape (1,)."""
    return torch.randint(SEED_RANGE, (1,), dtype=torch.long)


def seeded_generator(seed: torch.Tensor | int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` started from ``seed``."""
    return torch.Generator(device=device).manual_seed(int(seed))
