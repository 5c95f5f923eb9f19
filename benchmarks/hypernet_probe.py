"""Short probes of the hypernetwork's early learning speed against MAP and its own knobs.

Each config trains wrn-16-2 for 4 epochs at constant lr on a 5k class-balanced CIFAR-10 subset
(seed 0) and records the training error of every epoch (one z per mini-batch, as training).

Usage: python benchmarks/hypernet_probe.py [--data imagefolder:../shared/data/cifar10]
           [--json benchmarks/results/core/hypernet_probe.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from pyro_implicit import ImplicitMAP
from pyro_implicit.inference import TrainConfig, prepare
from pyro_implicit.inference.data import batches, load_data
from pyro_implicit.inference.train import make_optimizer

CONFIGS: dict[str, dict] = {
    "map": {"method": "map"},
    "hypernet (paper settings)": {},
    "prior uniform01": {"prior": "uniform01"},
    "lr 0.3": {"lr": 0.3},
    "lr 1.0": {"lr": 1.0},
    "lr 0.01": {"lr": 0.01},
    "output init x10 (full He range)": {"output_scale": 10.0},
    "z_dim 64": {"z_dim": 64},
    "h_dim 64": {"h_dim": 64},
    "no weight decay": {"weight_decay": 0.0},
}


def probe(data, spec: str, epochs: int, output_scale: float = 1.0, **overrides) -> list[float]:
    config = TrainConfig(model="wrn-16-2", data=spec, milestones=[0.99], **overrides)
    run = prepare(config, data)
    if output_scale != 1.0:
        with torch.no_grad():
            run.guide.hypernet.output.mul_(output_scale)
    optimizer = make_optimizer(run.config, run.model, run.guide)
    loss_fn = ImplicitMAP(config.weight_decay)
    gen = torch.Generator().manual_seed(0)
    errors = []
    for _ in range(epochs):
        wrong = seen = 0
        for x, y in batches(data.train_x, data.train_y, config.batch_size, gen):
            loss, logits = loss_fn.loss_and_logits(run.model, run.guide, run.normalizer(x, gen), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            wrong += (logits.argmax(-1) != y).sum().item()
            seen += len(y)
        errors.append(wrong / seen)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="imagefolder:../shared/data/cifar10")
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", default="benchmarks/results/core/hypernet_probe.json")
    args = parser.parse_args()
    data = load_data(args.data, args.subset)
    results = {}
    for name, overrides in CONFIGS.items():
        results[name] = probe(data, args.data, args.epochs, **overrides)
        print(f"{name:<34}" + " ".join(f"{e:.3f}" for e in results[name]), flush=True)
    out = {"model": "wrn-16-2", "data": args.data, "subset": args.subset, "epochs": args.epochs,
           "train_error_per_epoch": results}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
