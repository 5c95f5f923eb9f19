#!/usr/bin/env bash
# Every long run the open work needs, in order, each resumable: rerun this after a restart and
# it continues where it stopped (finished runs are skipped, a killed one resumes).
#   1. c10-10k-screen: candidates and references (a pool of workers), then their report;
#   2. two workers at once:
#      a. the c10-10k uncertainty evaluation, training the run folders it needs (map seeds 0-3,
#         the baselines, swag, laplace, the fixed bayes-hypernet), then their c10-10k rows;
#      b. the best hypernet's 3 seeds (once the screening has named it: hypernet-best-s*),
#         then the 120-epoch MAP / N(0,1) / U(0,1) runs.
# Two workers of one thread each: a 2-core machine does more runs per hour that way than one
# 2-thread run at a time. WORKERS=1 runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-2}
THREADS=$((WORKERS > 1 ? 1 : 2))

# run "driver.py" once per name, on $WORKERS processes that each take the next name not taken
# yet: no core waits for another's last run. A name some other process already runs (left
# over from an earlier queue) is skipped.
pool() {
    local driver=$1; shift
    local claims pids=() w
    claims=$(mktemp -d)
    for ((w = 0; w < WORKERS; w++)); do
        (
            for name in "$@"; do
                mkdir "$claims/$name" 2>/dev/null || continue
                if pgrep -f -- "$(basename "$driver") --only( .*)? $name( |\$)" > /dev/null; then
                    echo "queue: $name is already running elsewhere; skipped"
                    continue
                fi
                OMP_NUM_THREADS=$THREADS nice -n 10 "$PY" "$driver" --only "$name"
            done
        ) &
        pids+=($!)
    done
    for w in "${pids[@]}"; do wait "$w"; done
    rm -rf "$claims"
}

# the screening runs without a result yet, in RUNS order (references, candidates by promise,
# then the extra MAP seeds, which only calibrate "gap closed")
pending_screen() {
    local name
    for name in $("$PY" benchmarks/c10_10k_screen.py --list); do
        [ -e "benchmarks/results/c10-10k-screen/$name.json" ] || echo "$name"
    done
}

# 1. the screening runs: those interrupted at the last stop first (they resume), then the rest
mapfile -t pending < <(pending_screen)
started=() rest=()
for name in "${pending[@]}"; do
    if [ -d "runs/c10-10k-screen/$name" ]; then started+=("$name"); else rest+=("$name"); fi
done
[ ${#pending[@]} -eq 0 ] || pool benchmarks/c10_10k_screen.py "${started[@]}" "${rest[@]}"
nice -n 10 "$PY" benchmarks/c10_10k_screen_report.py

# 2a. one process: its run folders are shared
uncertainty() {
    OMP_NUM_THREADS=$THREADS nice -n 10 "$PY" benchmarks/c10_10k_uncertainty.py
    OMP_NUM_THREADS=$THREADS nice -n 10 "$PY" benchmarks/c10_10k.py --only map-s3 swag-s0 \
        laplace-s0 bayes-hypernet-s0
    nice -n 10 "$PY" benchmarks/c10_10k_uncertainty_report.py
}
# 2b.
longer() {
    local best
    mapfile -t best < <("$PY" benchmarks/c10_10k.py --list | grep '^hypernet-best-s' || true)
    [ ${#best[@]} -eq 0 ] || OMP_NUM_THREADS=$THREADS nice -n 10 "$PY" benchmarks/c10_10k.py \
        --only "${best[@]}"
    OMP_NUM_THREADS=$THREADS nice -n 10 "$PY" benchmarks/c10_10k.py --only map-e120-s0 \
        hypernet-normal-e120-s0 hypernet-uniform01-e120-s0
}
if [ "$WORKERS" -gt 1 ]; then
    uncertainty & a=$!
    longer & b=$!
    wait "$a"; wait "$b"
else
    uncertainty
    longer
fi
