#!/usr/bin/env bash
# The small CIFAR-10 runs the committed notebooks read (runs/analysis/*): wrn-16-2 on the
# class-balanced 5k subset of the shared CIFAR-10 copy, 6 epochs, seed 0 unless named:
#   all-in-one with each prior p(z) (normal, uniform, uniform01, halfnormal);
#   block-wise and layer-wise with uniform01 (the paper's correlation figures use U(0,1));
#   four independently trained MAP networks (seeds 0-3), the ensemble baseline.
# The notebooks also read the core slice's runs/core/{map,hypernet} (benchmarks/core_c10.sh) and,
# when finished, runs/c10-10k/hypernet-normal-s0. Finished runs are skipped, interrupted ones
# resumed. Then, to refresh the notebooks' committed outputs (about 20 minutes on 2 cores):
#   PYRO_IMPLICIT_RUNS=$PWD/runs .venv/bin/jupyter execute --inplace notebooks/0*.ipynb
# Usage: bash notebooks/train_runs.sh [RUNS_DIR]   (about 20 minutes on 2 idle CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/analysis}
data=${DATA:-imagefolder:../shared/data/cifar10}
epochs=${EPOCHS:-6}
common=(--model wrn-16-2 --data "$data" --train-subset 5000 --epochs "$epochs")

train() {  # train NAME ARGS...: train (or resume) the run folder $runs/NAME
  local out="$runs/$1"; shift
  if grep -q "\"epoch\": $epochs," "$out/metrics.json" 2>/dev/null; then
    return
  elif [ -f "$out/config.json" ]; then
    pyro-implicit train --resume "$out"
  else
    pyro-implicit train "${common[@]}" "$@" --out "$out"
  fi
}

for strategy in all-in-one block-wise layer-wise; do
  train "$strategy-uniform01" --method hypernet --strategy "$strategy" --prior uniform01
done
for prior in normal uniform halfnormal; do
  train "all-in-one-$prior" --method hypernet --strategy all-in-one --prior "$prior"
done
for seed in 0 1 2 3; do
  train "map-s$seed" --method map --seed "$seed"
done
