#!/usr/bin/env bash
# The runs of "accurate and diverse at once", in order, each resumable: the c10-10k-screen
# candidates and references, their report, then the 120-epoch MAP / N(0,1) / U(0,1) runs.
# Finished runs are skipped and a killed one resumes, so rerun this to continue.
# Two workers of one thread each (a 2-core machine does more runs per hour that way than one
# 2-thread run at a time); WORKERS=1 runs everything in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-2}

# run "driver.py" over the names given, split round-robin between $WORKERS processes
spread() {
    local driver=$1; shift
    local names=("$@") pids=() w i
    for ((w = 0; w < WORKERS; w++)); do
        local mine=()
        for ((i = w; i < ${#names[@]}; i += WORKERS)); do mine+=("${names[i]}"); done
        [ ${#mine[@]} -gt 0 ] || continue
        OMP_NUM_THREADS=$((WORKERS > 1 ? 1 : 2)) nice -n 10 "$PY" "$driver" --only "${mine[@]}" &
        pids+=($!)
    done
    for w in "${pids[@]}"; do wait "$w"; done
}

# references (done first), then the candidates by promise, then the extra MAP seeds, which
# only calibrate "gap closed"
spread benchmarks/c10_10k_screen.py map hypernet-normal hypernet-uniform01 \
    hypernet-normal-loc1-scale1 hypernet-normal-loc1-scale0.5 hypernet-normal-thetalr0.0625 \
    hypernet-normal-draws4 hypernet-normal-hold2-warmup4 hypernet-normal-mixture2 \
    hypernet-uniform01-draws4 map-s1 map-s2 map-s3
nice -n 10 "$PY" benchmarks/c10_10k_screen_report.py
spread benchmarks/c10_10k.py map-e120-s0 hypernet-normal-e120-s0 hypernet-uniform01-e120-s0
