#!/usr/bin/env bash
# Every inference method on the shared CIFAR-10 10k subset with wrn-16-2, the same short schedule
# (5 epochs, lr drops at epochs 2, 3, 4), seed 0, each evaluated with N in {1,2,4,8,16} and BN
# recalibrated over 20 training batches per sample. Runs one after another; re-running the
# script resumes an interrupted run and skips finished runs and evaluations.
# Usage: nice -n 5 bash benchmarks/methods_c10.sh [RUNS_DIR]
set -euo pipefail
runs=${1:-runs/methods}
data=${DATA:-imagefolder:../shared/data/cifar10}
epochs=5
out=benchmarks/results/methods
mkdir -p "$runs" "$out"
declare -A extra=(
  [map]="--method map"
  [mle]="--method mle"
  [ensemble]="--method ensemble --members 4"
  [hypernet]="--method hypernet --strategy all-in-one --prior normal"
  [bbb]="--method bbb --local-reparam"
  [bayes-hypernet]="--method bayes-hypernet"
  [mc-dropout]="--method mc-dropout"
)
for label in map mle hypernet bbb bayes-hypernet mc-dropout ensemble; do
  run="$runs/$label"
  if ! grep -q "\"epoch\": $epochs" "$run/metrics.json" 2>/dev/null; then
    if [ -f "$run/config.json" ]; then
      pyro-implicit train --resume "$run"
    else
      # shellcheck disable=SC2086
      pyro-implicit train --model wrn-16-2 ${extra[$label]} --data "$data" --train-subset 10000 \
        --epochs "$epochs" --seed 0 --out "$run"
    fi
  fi
  if [ ! -f "$out/$label.eval.json" ]; then
    pyro-implicit evaluate "$run" --samples 1,2,4,8,16 --bn-batches 20 \
      --json "$out/$label.eval.json"
  fi
  cp "$run/metrics.json" "$out/$label.train.json"
done
python benchmarks/methods_table.py "$out"
