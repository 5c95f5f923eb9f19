"""Probe: how much of the hypernetwork's step overhead on WRN-28-10 does fusing the output
layers' SGD update into their backward remove?

The library's step makes four passes over the output layers theta_out (h_dim x the generated
weights): generation, the hidden layers' gradient (theta_out^T g), writing theta_out's gradient
(the outer product g h^T) and the SGD update (reading theta_out, its gradient and momentum). This
probe patches ``_Generate.backward`` so that, chunk by chunk of theta_out's rows (a few MB, in
cache), it forms the hidden gradient, the outer product and the fused-SGD update of that chunk
at once, and never writes theta_out's gradient: the optimiser then skips theta_out. It is a
measurement, not a library mode (it leaves theta_out.grad unset, and would bypass a
data-parallel all-reduce).

It first checks on wrn-16-2 that three fused steps leave theta, and theta_out's momentum, equal
to three ordinary steps from the same state and z draws; then times plain / hypernet / fused
steps interleaved on wrn-28-10, batch 32 (the speed benchmark's CPU setting).

Usage: python benchmarks/fused_update_probe.py [--json benchmarks/results/speed/fused_probe.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import Variant, _cpu_name, write_json  # noqa: E402

import pyro_implicit.hypernet as hypernet  # noqa: E402

ROWS = 65_536  # rows of theta_out per chunk: 4 MB at h_dim 16
_library_backward = hypernet._Generate.backward


def _fused_backward(ctx, *grads):
    """``_Generate.backward`` with theta_out's SGD step done here, chunk by chunk."""
    output, hidden = ctx.saved_tensors
    optimizer = getattr(ctx.owner, "fused_optimizer", None)
    if optimizer is None:
        return _library_backward(ctx, *grads)
    group = next(g for g in optimizer.param_groups
                 if any(p is ctx.owner.output for p in g["params"]))
    state = optimizer.state[ctx.owner.output]
    if "momentum_buffer" not in state:  # mu * 0 + d = d: SGD's first step exactly
        state["momentum_buffer"] = torch.zeros_like(output)
    momentum = state["momentum_buffer"]
    scratch = torch.empty(ROWS, output.shape[1], dtype=output.dtype)
    grad_hidden = torch.zeros_like(hidden, dtype=output.dtype)
    start = 0
    for i, (size, g) in enumerate(zip(ctx.sizes, grads, strict=True)):
        for a in range(start, start + size, ROWS):
            b = min(a + ROWS, start + size)
            rows, g_rows = output[a:b], g[a - start:b - start]
            torch.addmv(grad_hidden[i], rows.t(), g_rows, out=grad_hidden[i])
            grad_rows = torch.mul(g_rows.unsqueeze(1), hidden[i].unsqueeze(0),
                                  out=scratch[:b - a])
            torch._fused_sgd_([rows], [grad_rows], [momentum[a:b]],
                              weight_decay=group["weight_decay"], momentum=group["momentum"],
                              lr=group["lr"], dampening=group["dampening"],
                              nesterov=group["nesterov"], maximize=False, is_first_step=False)
        start += size
    return None, grad_hidden.to(hidden.dtype), None, None


def _fuse(variant: Variant) -> Variant:
    variant.guide.hypernet.fused_optimizer = variant.optimizer
    return variant


def check_equal(net: str = "wrn-16-2", batch: int = 32, steps: int = 3) -> dict:
    """Max |difference| of theta and theta_out's momentum after ``steps`` ordinary vs fused
    steps from the same initial state, batch and z draws."""
    ordinary = Variant("hypernet", net, "cpu", batch, False)
    fused = _fuse(Variant("hypernet", net, "cpu", batch, False))
    for step in range(steps):
        for variant in (ordinary, fused):
            torch.manual_seed(step)
            variant.step()
    a, b = ordinary.guide.hypernet, fused.guide.hypernet
    diff = {name: (getattr(a, name) - getattr(b, name)).abs().max().item()
            for name in ("output", "hidden")}
    diff["output_momentum"] = (ordinary.optimizer.state[a.output]["momentum_buffer"]
                               - fused.optimizer.state[b.output]["momentum_buffer"]
                               ).abs().max().item()
    diff["output_max_abs"] = a.output.abs().max().item()
    return {"net": net, "batch": batch, "steps": steps, "max_abs_diff": diff}


def time_steps(net: str = "wrn-28-10", batch: int = 32, steps: int = 10, warmup: int = 3
               ) -> dict:
    """Median step seconds of plain, hypernet and fused-update hypernet steps, interleaved."""
    variants = {"plain": Variant("plain", net, "cpu", batch, False),
                "hypernet": Variant("hypernet", net, "cpu", batch, False),
                "fused": _fuse(Variant("hypernet", net, "cpu", batch, False))}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for i in range(warmup + steps):
        for kind, variant in variants.items():
            t0 = time.perf_counter()
            variant.step()
            if i >= warmup:
                times[kind].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"net": net, "batch": batch, "steps": steps, "median_s": med,
            "hypernet_over_plain": med["hypernet"] / med["plain"],
            "fused_over_plain": med["fused"] / med["plain"], "times_s": times}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="benchmarks/results/speed/fused_probe.json")
    args = p.parse_args()
    hypernet._Generate.backward = staticmethod(
        torch.autograd.function.once_differentiable(_fused_backward))
    result = {"device": _cpu_name(), "torch": torch.__version__, "rows_per_chunk": ROWS,
              "equivalence": check_equal()}
    print("fused vs ordinary, max |diff|:", result["equivalence"]["max_abs_diff"], flush=True)
    result["timing"] = t = time_steps()
    print(f"{t['net']} b{t['batch']}: " + "  ".join(
        f"{k} {v:.3f}s" for k, v in t["median_s"].items())
        + f"  hypernet/plain {t['hypernet_over_plain']:.3f}  fused/plain "
          f"{t['fused_over_plain']:.3f}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
