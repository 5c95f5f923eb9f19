"""Training-step speed: plain MAP vs hypernet through Pyro vs the same hypernet in bare PyTorch.

Variants, each with its own network and optimiser, run interleaved step by step in one process
(so drifts in machine load hit all alike), warm-up steps excluded, median over ``--steps``:
  (a) plain   - ``map`` as ``pyro-implicit train`` runs it (:func:`train_step`),
  (b) hypernet - ``hypernet`` (all-in-one, N(0, 1), z = h = 16) exactly as train runs it,
  (c) bare    - the same hypernet step without Pyro: z drawn with torch, kernels from the
                hypernetworks, ``functional_call``, cross-entropy, the same optimiser (whose
                weight decay is the prior, as in train),
  (d) unfused - (b) with theta's SGD update left to ``optimizer.step`` instead of fused into
                the backward (``make_optimizer(fuse=False)``): what the fusion gains.
Peak RSS of each variant is measured in a subprocess of its own (a few steps, VmHWM).
Averaging: N = 16 frozen samples evaluated as ``evaluate`` does (model replayed per sample,
sample-outer loop), each sample's pass interleaved with a pass of one plain network
(``materialize``) on the same test batches, and the same average vectorised over the samples
with ``torch.func.vmap``.
The optimiser step alone (plain, hypernet, unfused) is timed too: unfused, it is one of the
hypernet step's passes over theta (SGD with momentum reads and writes all of it). So is the
bandwidth floor: plain step + the least memory traffic over theta a hypernet step needs
(:func:`theta_floor`).
With ``--json FILE``, the nets measured are written into FILE after each net, keeping the other
nets already there when FILE comes from the same device, torch and thread count.

Usage: python benchmarks/speed.py [--device cuda] [--json FILE] [--nets wrn-16-2,wrn-28-10]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call
from torch.nn import functional as F

from pyro_implicit import eval_mode, freeze_posterior
from pyro_implicit.hypernet import release_grads
from pyro_implicit.inference import TrainConfig
from pyro_implicit.inference.methods import build
from pyro_implicit.inference.recipes import HYPERNET
from pyro_implicit.inference.train import make_loss, make_optimizer, train_step
from pyro_implicit.posterior import sample_logits

VARIANTS = ("plain", "hypernet", "bare", "unfused")
CPU_BATCH = {"wrn-16-2": 128, "wrn-28-10": 32}
GPU_BATCH = {"wrn-16-2": 128, "wrn-28-10": 128}


class Variant:
    """One benchmarked training step with its own model, guide and optimiser: ``kind`` is one
    of VARIANTS, or any name with ``changes`` (TrainConfig fields, e.g. another method)."""

    def __init__(self, kind: str, net: str, device: str, batch: int, channels_last: bool,
                 changes: dict | None = None, num_data: int = 50_000):
        # the paper's hypernet step (one z per mini-batch), whatever train's defaults
        base = {"method": "map"} if kind == "plain" else HYPERNET
        self.config = TrainConfig(**{**base, "model": net, "device": device, **(changes or {})})
        torch.manual_seed(0)
        self.model, self.guide = build(self.config, 10, 3, num_data)
        self.model.to(device).train()
        self.guide.to(device).train()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(self.config, self.model, self.guide,
                                        fuse=kind != "unfused")
        self.loss = make_loss(self.config)
        g = torch.Generator().manual_seed(1)
        # channels-last strides, as train's batches come out of the random crop (Normalizer)
        self.x = torch.randn(batch, 32, 32, 3, generator=g).to(device).permute(0, 3, 1, 2)
        if channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(device)
        self.step = self._bare if kind == "bare" else self._train
        if kind == "bare":  # plain torch objects, looked up once: no Pyro in the loop
            self.net, self.hypernet = self.model.net, self.guide.hypernet
            self.layer_group = self.guide.layer_group
            self.names = list(self.guide.site_names)
            self.z_shape = self.guide.latent_shape

    def _train(self) -> None:
        train_step(self.model, self.guide, self.loss, self.optimizer, self.x, self.y)

    def _bare(self) -> None:
        z = torch.randn(self.z_shape, device=self.x.device)
        kernels = dict(zip(self.names, self.hypernet(z[self.layer_group]), strict=True))
        logits = functional_call(self.net, kernels, (self.x,), strict=False, tie_weights=False)
        loss = F.cross_entropy(logits, self.y)  # the prior: the optimiser's weight decay
        release_grads(self.hypernet)  # as train_step
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), (logits.argmax(-1) == self.y).sum()  # as train_step: no sync


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fn, device: str, repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` (after one untimed call if
    ``warmup``), the device synchronised around each."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_json(path: str | Path, data: dict) -> None:
    """Write a benchmark's raw output to ``path`` (folders made as needed) and say so."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}")


def time_net(net: str, device: str, batch: int, steps: int, warmup: int,
             channels_last: bool, autocast: bool) -> dict:
    """Median step seconds of the variants, interleaved."""
    variants = {k: Variant(k, net, device, batch, channels_last) for k in VARIANTS}
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if autocast
           else torch.autocast("cpu", enabled=False))
    with ctx:
        for i in range(warmup + steps):
            for kind, variant in variants.items():
                _sync(device)
                t0 = time.perf_counter()
                variant.step()
                _sync(device)
                if i >= warmup:
                    times[kind].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    # the optimiser step alone (its gradients are still set): one of the passes over theta
    update = {kind: median_seconds(variants[kind].optimizer.step, device, 3, warmup=False)
              for kind in ("plain", "hypernet", "unfused")}
    floor = theta_floor(variants["hypernet"].guide.hypernet.output.detach(), device,
                        med["plain"])
    variants.clear()  # free the nets (and their reference cycles) before the next part
    gc.collect()
    return {"batch": batch, "steps": steps, "plain_s": med["plain"],
            "hypernet_s": med["hypernet"], "bare_s": med["bare"],
            "hypernet_over_plain": med["hypernet"] / med["plain"],
            "pyro_over_bare": med["hypernet"] / med["bare"], "unfused_s": med["unfused"],
            "unfused_over_plain": med["unfused"] / med["plain"],
            "optimizer_step_s": update, "theta_floor": floor, "times_s": times}


@torch.no_grad()
def theta_floor(theta: torch.Tensor, device: str, plain_s: float, repeats: int = 5) -> dict:
    """The least time a hypernet step can add to a plain one: its passes over the output layers
    theta at this machine's memory bandwidth. Generating the kernels reads theta once; SGD with
    momentum reads and writes theta and its momentum buffer (the hidden gradient, the outer
    product and weight decay can all ride on that pass). Read: ``theta.sum()``; read and write:
    ``theta.mul_(1)``, which leaves theta unchanged."""
    read_s = median_seconds(theta.sum, device, repeats)
    read_write_s = median_seconds(lambda: theta.mul_(1), device, repeats)
    floor_s = read_s + 2 * read_write_s
    return {"gb": theta.numel() * theta.element_size() / 1e9, "read_s": read_s,
            "read_write_s": read_write_s, "floor_s": floor_s,
            "hypernet_over_plain_floor": (plain_s + floor_s) / plain_s}


@torch.no_grad()
def time_averaging(net: str, device: str, batch: int, n: int = 16, batches: int = 8,
                   vmap: bool = True) -> dict:
    """Seconds for N-sample averaging vs N x one plain network, on ``batches`` test batches
    (each sample's kernels are generated once for all of them, as in ``evaluate``): each
    sample's pass is timed right after a pass of the plain network, so load drifts hit both
    alike, and the ratio is of the medians of the N pairs."""
    variant = Variant("hypernet", net, device, batch, channels_last=False)
    model, guide = variant.model, variant.guide
    frozen = freeze_posterior(model, guide, n)
    g = torch.Generator().manual_seed(2)
    inputs = [torch.randn(batch, 3, 32, 32, generator=g).to(device) for _ in range(batches)]
    plain = model.materialize(frozen.sample_weights(0)).eval()

    def single() -> None:
        for x in inputs:
            plain(x).softmax(-1)

    def sample(i: int) -> None:
        for x in inputs:
            sample_logits(model, frozen, i, x).softmax(-1)

    single()  # warm-up
    single_s, sample_s = [], []
    with eval_mode(model):
        for i in range(n):
            single_s.append(median_seconds(single, device, 1, warmup=False))
            sample_s.append(median_seconds(lambda i=i: sample(i), device, 1, warmup=False))
    one, per_sample = statistics.median(single_s), statistics.median(sample_s)
    result = {"n": n, "images": sum(len(x) for x in inputs), "single_s": one,
              "sample_s": per_sample, "xn_s": sum(sample_s), "xn_over_n_single": per_sample / one,
              "times_s": {"single": single_s, "sample": sample_s}}
    if vmap:
        result["vmap_s"] = _vmapped_average(model, frozen, inputs, device)
        result["vmap_over_loop"] = result["vmap_s"] / result["xn_s"]
    return result


def _vmapped_average(model, frozen, inputs: list[torch.Tensor], device: str) -> float:
    """Seconds for the same N-sample average with the samples vectorised by ``torch.func.vmap``
    over stacked kernels (a grouped convolution per layer), kernel generation included; the
    vectorised forward is timed on the first of ``inputs`` and counted once per input batch."""
    net, names = model.net.eval(), list(frozen.guide.site_names)

    def probs(kernels: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(net, kernels, (x,), strict=False, tie_weights=False).softmax(-1)

    batched = torch.func.vmap(probs, in_dims=(0, None))
    _sync(device)
    t0 = time.perf_counter()
    samples = [frozen.sample_weights(i) for i in range(len(frozen))]
    stacked = {k: torch.stack([w[k] for w in samples]) for k in names}
    _sync(device)
    t1 = time.perf_counter()
    batched(stacked, inputs[0]).mean(0)
    _sync(device)
    return t1 - t0 + (time.perf_counter() - t1) * len(inputs)


def peak_rss(net: str, kind: str, device: str, batch: int, steps: int) -> float:
    """Peak RSS (MB) of a fresh process building ``kind`` and running ``steps`` steps.

    Read from ``VmHWM`` (the high-water mark of the process's own memory map): ru_maxrss would
    keep the RSS of the forked copy of this process from before ``exec``.
    """
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"from speed import Variant; v = Variant({kind!r}, {net!r}, {device!r}, {batch}, "
            f"False)\nfor _ in range({steps}): v.step()\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return int(out.split()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--nets", default="wrn-16-2,wrn-28-10")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="override the per-net batch size")
    p.add_argument("--rss-steps", type=int, default=2, help="steps per peak-RSS subprocess")
    p.add_argument("--json", default=None, metavar="FILE")
    p.add_argument("--avg-batches", type=int, default=8,
                   help="test batches of the averaging measurement")
    p.add_argument("--vmap-nets", default="wrn-16-2",
                   help="nets whose averaging is also timed vectorised with vmap (it holds N x "
                        "the kernels and activations: WRN-28-10 exceeds 24 GB)")
    p.add_argument("--rss-only", action="store_true",
                   help="only (re)measure peak RSS, into the nets of an existing --json FILE")
    p.add_argument("--averaging-only", action="store_true",
                   help="only (re)measure averaging, into the nets of an existing --json FILE")
    args = p.parse_args()
    vmap_nets = set(args.vmap_nets.split(","))
    if args.rss_only or args.averaging_only:
        result = json.loads(Path(args.json).read_text())
        for net, row in result["nets"].items():
            if args.rss_only:
                row["peak_rss_mb"] = {k: peak_rss(net, k, args.device, row["batch"],
                                                  args.rss_steps) for k in VARIANTS}
            else:
                row["averaging"] = time_averaging(net, args.device, row["batch"],
                                                  batches=args.avg_batches,
                                                  vmap=net in vmap_nets)
            print(_row(net, row), flush=True)
        write_json(args.json, result)
        return
    if args.steps < 10:
        p.error(f"--steps {args.steps}: the benchmark takes the median over at least 10 steps")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    if cuda:
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(args.device) if cuda else _cpu_name()
    result = {"device": device_name, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "nets": {}, "wall_s": {},
              "note": "each net's ratios come from one run; nets measured in separate runs "
                      "(--nets NAME) are merged into the same --json FILE"}
    previous = json.loads(Path(args.json).read_text()) if args.json and Path(
        args.json).is_file() else None
    if previous and all(previous.get(k) == result[k] for k in ("device", "torch", "threads")):
        result["nets"] = previous["nets"]
        if isinstance(previous.get("wall_s"), dict):
            result["wall_s"] = previous["wall_s"]
    for net in args.nets.split(","):
        t_start = time.perf_counter()
        batch = args.batch or (GPU_BATCH if cuda else CPU_BATCH).get(net, 32)
        row = time_net(net, args.device, batch, args.steps, args.warmup,
                       channels_last=cuda, autocast=cuda)
        row["averaging"] = time_averaging(net, args.device, batch, batches=args.avg_batches,
                                          vmap=net in vmap_nets)
        if not cuda:
            row["peak_rss_mb"] = {k: peak_rss(net, k, args.device, batch, args.rss_steps)
                                  for k in VARIANTS}
        else:
            row["precision"], row["channels_last"] = "bf16 autocast", True
        result["nets"][net] = row
        result["wall_s"][net] = time.perf_counter() - t_start
        print(_row(net, row), flush=True)
        if args.json:  # after every net: a later net that fails keeps the earlier ones
            write_json(args.json, result)


def _row(net: str, r: dict) -> str:
    rss = r.get("peak_rss_mb")
    rss_text = "" if rss is None else "  peak RSS MB " + " / ".join(
        f"{k} {v:.0f}" for k, v in rss.items())
    avg = r["averaging"]
    return (f"{net} b{r['batch']}: plain {r['plain_s']:.3f}s  hypernet {r['hypernet_s']:.3f}s  "
            f"bare {r['bare_s']:.3f}s  unfused {r['unfused_s']:.3f}s  "
            f"b/a {r['hypernet_over_plain']:.3f}  "
            f"b/c {r['pyro_over_bare']:.3f}  x{avg['n']}/({avg['n']} x single) "
            f"{avg['xn_over_n_single']:.3f}  vmap/loop "
            f"{avg.get('vmap_over_loop', float('nan')):.3f}  optimiser step "
            f"plain {r['optimizer_step_s']['plain']:.3f}s hypernet "
            f"{r['optimizer_step_s']['hypernet']:.3f}s  bandwidth floor b/a "
            f"{r.get('theta_floor', {}).get('hypernet_over_plain_floor', float('nan')):.3f}"
            f"{rss_text}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} x{torch.get_num_threads()} threads"
    except OSError:
        pass
    return "cpu"


if __name__ == "__main__":
    main()
