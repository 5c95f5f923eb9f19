"""Shared fixtures: a clean Pyro state per test, tiny networks and tiny on-disk datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from PIL import Image
from torch import nn

from pyro_implicit import BayesianNetwork, ImplicitGuide
from pyro_implicit.models import create_model


@pytest.fixture(autouse=True)
def clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def tiny_model(strategy: str = "all-in-one", prior: str = "normal", name: str = "wrn-10-1",
               num_data: int = 64, in_channels: int = 3):
    """A WRN-10-1 (three blocks) as a Pyro model with its implicit guide."""
    net = create_model(name, num_classes=5, in_channels=in_channels)
    model = BayesianNetwork(net, num_data=num_data)
    guide = ImplicitGuide(model, strategy=strategy, prior=prior, z_dim=4, h_dim=6)
    return model, guide


class LinearHead(nn.Module):
    """A linear classifier of 2-channel 1x1 "images" (``outputs`` classes): a network small
    enough for closed forms and direct computations."""

    def __init__(self, outputs: int):
        super().__init__()
        self.fc = nn.Linear(2, outputs)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny_batch(n: int = 8, size: int = 8, channels: int = 3, classes: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, classes, (n,),
                                                                            generator=g)


def make_imagefolder(root: Path, classes=("a", "b", "c"), train_per_class: int = 12,
                     test_per_class: int = 4, size: int = 8, shift: float = 0.0) -> Path:
    """Tiny RGB PNG ImageFolder tree with class-dependent colours (learnable)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = np.zeros((size, size, 3))
                base[..., c % 3] = 150 + 80 * (c // 3)
                img = np.clip(base + shift + rng.normal(0, 40, base.shape), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root
