"""GPU path check: epoch time of the real training loop in fp32 and bf16, and the host-device
synchronisations it makes (CUDA's sync debug mode), plus a profiler table of a few steps.

The loop reads its loss sums back every ``SYNC_EVERY`` steps and at the end of the epoch, and
writes a checkpoint then; nothing else in a step may synchronise. Synthetic CIFAR-sized data
(uint8, in memory, so it lives on the GPU), the recipe's network and method.

Usage: python benchmarks/gpu_path.py [--recipe paper-wrn28-10-c10] [--steps 120] [--json FILE]
       (on a machine without CUDA it runs on CPU, without sync counting: a dry run)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import warnings
from pathlib import Path

import torch

from pyro_implicit.inference.data import ImageData
from pyro_implicit.inference.recipes import get_recipe
from pyro_implicit.inference.train import SYNC_EVERY, fit


def synthetic(items: int, size: int = 32, classes: int = 10) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (items, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, classes, (items,), generator=g)
    return ImageData(x, y, x[:256], y[:256], [str(c) for c in range(classes)], pad=4, flip=True)


def run(config, data: ImageData, count_syncs: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if count_syncs:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            done = fit(config, Path(tmp) / "run", progress=False, data=data)
        finally:
            if count_syncs:
                torch.cuda.set_sync_debug_mode(0)
        history = json.loads((Path(tmp) / "run" / "metrics.json").read_text())["history"]
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    steps = -(-len(data.train_y) // config.batch_size)
    return {"precision": config.precision, "channels_last": config.channels_last,
            "steps": steps, "epoch_s": history[0]["seconds"],
            "step_ms": 1000 * history[0]["seconds"] / steps,
            "syncs": len(syncs) if count_syncs else None,
            "sync_sites": sorted(set(syncs))[:10], "loss": history[0]["loss"],
            "params": sum(p.numel() for p in done.guide.parameters())
            + sum(p.numel() for p in done.model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="paper-wrn28-10-c10")
    p.add_argument("--model", default=None, help="override the recipe's network")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--profile-steps", type=int, default=6)
    p.add_argument("--json", default=None, metavar="FILE")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    recipe = get_recipe(args.recipe)
    changes = {"epochs": 1, "device": "cuda" if cuda else "cpu", "channels_last": cuda,
               "data": "digits", "members": 1}
    if args.model:
        changes["model"] = args.model
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    base = recipe.config(**changes)
    if base.method == "ensemble":
        base = dataclasses.replace(base, method=base.member_method)
    data = synthetic(args.steps * base.batch_size)
    result = {"device": torch.cuda.get_device_name() if cuda else "cpu",
              "torch": torch.__version__, "recipe": args.recipe, "model": base.model,
              "method": base.method, "batch_size": base.batch_size, "sync_every": SYNC_EVERY,
              "runs": []}
    for precision in ("fp32", "bf16"):
        config = dataclasses.replace(base, precision=precision)
        run(config, synthetic(4 * base.batch_size), False)  # warm-up: cudnn benchmark, allocator
        row = run(config, data, cuda)
        result["runs"].append(row)
        print(f"{precision}: {row['step_ms']:.1f} ms/step over {row['steps']} steps, "
              f"{row['syncs']} syncs (expected ~{-(-row['steps'] // SYNC_EVERY)} loss reads + "
              "the epoch's record and checkpoint)", flush=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    config = dataclasses.replace(base, precision="bf16")
    with torch.profiler.profile(activities=activities) as prof:
        run(config, synthetic(args.profile_steps * base.batch_size), False)
    events = prof.key_averages()
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    table = events.table(sort_by=sort, row_limit=20)
    print(table)
    result["profile_syncs"] = {e.key: e.count for e in events
                               if "Synchronize" in e.key or "cudaMemcpy" in e.key}
    result["profile_table"] = table
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
