#!/usr/bin/env bash
# The core slice's real number: wrn-16-2 map vs hypernet (all-in-one, normal) on the shared
# CIFAR-10 10k subset, 15 epochs, evaluated with N in {1,2,4,8,16} (full-epoch BN recalibration).
# Usage: bash benchmarks/core_c10.sh [RUNS_DIR]   (about 30 minutes on 2 cores)
set -euo pipefail
runs=${1:-runs/core}
data=${DATA:-imagefolder:../shared/data/cifar10}
out=benchmarks/results/core
mkdir -p "$runs" "$out"
for method in map hypernet; do
  if [ ! -f "$runs/$method/checkpoint.pt" ] || ! grep -q '"epoch": 15' "$runs/$method/metrics.json" 2>/dev/null; then
    if [ -f "$runs/$method/config.json" ]; then
      pyro-implicit train --resume "$runs/$method"
    else
      pyro-implicit train --model wrn-16-2 --method "$method" --strategy all-in-one --prior normal \
        --data "$data" --train-subset 10000 --epochs 15 --seed 0 --out "$runs/$method"
    fi
  fi
  pyro-implicit evaluate "$runs/$method" --samples 1,2,4,8,16 --json "$out/$method.eval.json"
  cp "$runs/$method/metrics.json" "$out/$method.train.json"
done
python benchmarks/core_table.py "$out"
