"""Instrument the Bayesian hypernetwork's training on c10-10k step by step, up to a divergence.

Trains ``--method bayes-hypernet`` with the c10-10k protocol (the run's exact data order and
RNG streams, through the training loop's own batches and step) and records, every step: the
loss and its terms, the gradient norm of each parameter group (couplings, the flow's affine
map, the weight-norm directions, the rest), the couplings' raw and clamped log-scales, the
emitted weight-norm scales g (|g| min / max, share below 1e-3), the flow's output before the
affine map, and the kernel norms. Stops at the first non-finite loss or after ``--steps``.

Usage: python benchmarks/bayes_hypernet_probe.py [--steps 400] [--set KEY=VALUE ...]
           [--json benchmarks/results/bayes_hypernet/probe.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch

from pyro_implicit.bayes_hypernet import SCALES
from pyro_implicit.inference import TrainConfig, prepare
from pyro_implicit.inference.distributed import SINGLE
from pyro_implicit.inference.methods import METHODS, learning_rate, validate
from pyro_implicit.inference.recipes import C10_10K
from pyro_implicit.inference.train import _Loop, make_loss, make_optimizer, train_step


def _norm(params) -> float:
    grads = [p.grad for p in params if p.grad is not None]
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads)) if grads else 0.0


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class Recorder:
    """Hooks on the flow that keep each coupling's raw log-scale output and the emitted scales g
    of the last forward."""

    def __init__(self, guide):
        self.raw: list[torch.Tensor | None] = [None] * len(guide.couplings)
        self.g: torch.Tensor | None = None
        for i, coupling in enumerate(guide.couplings):
            coupling.nn.register_forward_hook(self._hook(i))
        guide.register_forward_hook(self._keep_g)

    def _keep_g(self, module, inputs, output):
        self.g = output[SCALES].detach()

    def _hook(self, i: int):
        def keep(module, inputs, output):
            self.raw[i] = output[1].detach()
        return keep


def probe(config: TrainConfig, steps: int) -> list[dict]:
    run = prepare(config)
    optimizer = make_optimizer(run.config, run.model, run.guide)
    guide, model = run.guide, run.model
    recorder = Recorder(guide)
    groups = {"couplings": list(guide.couplings.parameters()),
              "affine": [guide.loc, guide.rho],
              "directions": list(model.directions.parameters())}
    known = {id(p) for ps in groups.values() for p in ps}
    groups["rest"] = [p for p in model.parameters() if id(p) not in known]
    loop = _Loop(run, optimizer, SINGLE, Path("/nonexistent"))
    clip = METHODS[config.method].clip(config, guide)
    records: list[dict] = []
    generator = loop.data_gen
    epoch = 0
    with pyro.validation_enabled(False):
        while len(records) < steps:
            loss_fn = make_loss(config, epoch)
            lr = learning_rate(config, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            model.train()
            guide.train()
            order = torch.randperm(len(loop.y_all), generator=generator)
            for step, x, y, total in loop.batches(epoch, 0, order):
                loss, correct = train_step(model, guide, loss_fn, optimizer, x, y,
                                           likelihood_weight=len(y) / total, clip=clip)
                g, sigma = recorder.g, torch.nn.functional.softplus(guide.rho).detach()
                terms = loss_fn.terms
                norms = torch.cat([model.direction(s.name).detach().flatten(1).norm(dim=1)
                                   for s in model.kernel_sites])
                rec = {"global_step": len(records) + 1, "epoch": epoch + 1, "step": step + 1,
                       "lr": lr, "loss": float(loss), "error": 1 - int(correct) / len(y),
                       "data": float(terms["data"]), "kl": float(terms["kl"]),
                       "grad_norm": {k: _norm(v) for k, v in groups.items()},
                       "log_scale_raw_absmax": [float(r.abs().max()) for r in recorder.raw],
                       "sigma_min": float(sigma.min()), "sigma_max": float(sigma.max()),
                       "g_absmin": float(g.abs().min()), "g_absmax": float(g.abs().max()),
                       "g_small": float((g.abs() < 1e-3).float().mean()),
                       "flow_out_absmax": float(((g - guide.loc.detach()) / sigma).abs().max()),
                       "loc_absmin": float(guide.loc.detach().abs().min()),
                       "direction_norm_min": float(norms.min()),
                       "direction_norm_max": float(norms.max())}
                records.append(rec)
                if not math.isfinite(rec["loss"]) or len(records) >= steps:
                    return records
            epoch += 1
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=C10_10K["data"])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="TrainConfig changes, e.g. init_scale=0.001")
    p.add_argument("--json", type=Path,
                   default=Path("benchmarks/results/bayes_hypernet/probe.json"))
    args = p.parse_args()
    changes = dict(kv.split("=", 1) for kv in args.set)
    config = validate(TrainConfig(**{**C10_10K, "data": args.data, "method": "bayes-hypernet",
                                     "recipe": "c10-10k",
                                     **{k: _value(v) for k, v in changes.items()}}))
    t0 = time.perf_counter()
    records = probe(config, args.steps)
    out = {"config": changes, "seconds": time.perf_counter() - t0, "steps": records}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.json)
    last = records[-1]
    print(f"{len(records)} steps, last loss {last['loss']}, grads {last['grad_norm']}")


if __name__ == "__main__":
    main()
