#!/usr/bin/env bash
# Every long run the open work needs, in priority order, each resumable: rerun this after a
# restart and it continues where it stopped (finished runs are skipped, a killed one resumes).
# Run folders (runs/, ignored by git) live only as long as the checkout: a fresh clone starts
# them again, so the order puts first what finishes whole rows in a few hours of 2 cores.
#   1. the c10-10k-screen candidates interrupted at the last stop (same checkout only);
#   2. the best hypernet's 3 seeds (hypernet-best-s*, the configuration the screening named);
#   3. the fixed bayes-hypernet's c10-10k row, beside the screening candidates (each under
#      half an hour of one core; the BatchNorm-groups controls first); then swag and laplace
#      (laplace is fitted to map-s0's folder; both are skipped once their JSON is committed);
#   4. the uncertainty evaluation: the MAP folders of its deep-ensemble equivalent (map-s0 to
#      map-s3, and map-s3's c10-10k row; their curve is kept, so later checkouts skip them),
#      then each other run trained where its folder is gone and evaluated in the same job;
#   5. the runner-up's seeds (the paper's U(0,1): 1 and 2), the 120-epoch MAP / N(0,1) /
#      U(0,1) runs, then the screening's extra MAP seeds (they only calibrate its "gap
#      closed");
#   6. the reports.
# A pool of WORKERS processes of one thread each takes the jobs in order: a 2-core machine does
# more runs per hour that way than one 2-thread run at a time. WORKERS=1 runs them one by one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WORKERS=${WORKERS:-2}
THREADS=$((WORKERS > 1 ? 1 : 2))
SCREEN_RESULTS=benchmarks/results/c10-10k-screen
DRIVERS=${DRIVERS:-"benchmarks/c10_10k[a-z_]*[.]py"}
POLL=${POLL:-60}  # seconds between looks for a free core

# run each job ("DRIVER NAME [FLAG ...]": $PY DRIVER --only NAME FLAG ...) once, on $WORKERS
# processes that each take the next job not taken yet, so no core waits for another's last run.
# A job whose run some other process already has (left over from an earlier queue) is skipped,
# no job starts while $WORKERS drivers are running, and a job that fails is reported and the
# worker goes on to the next.
pool() {
    local claims pids=() w
    claims=$(mktemp -d)
    for ((w = 0; w < WORKERS; w++)); do
        (
            local i=0 job driver name pid
            for job in "$@"; do
                i=$((i + 1))
                mkdir "$claims/$i" 2>/dev/null || continue
                read -r driver name flags <<< "$job"
                if pgrep -f -- "$(basename "$driver") --only( .*)? $name( |\$)" > /dev/null; then
                    echo "queue: $name ($driver) is already running elsewhere; skipped"
                    continue
                fi
                # one worker at a time waits for a free core and starts its driver (holding
                # the lock until the driver shows), so two never take the same core
                flock 9
                while [ "$(pgrep -fc -- "$DRIVERS" || true)" -ge "$WORKERS" ]; do sleep "$POLL"; done
                # shellcheck disable=SC2086  # flags are words
                OMP_NUM_THREADS=$THREADS nice -n 10 "$PY" "$driver" --only "$name" $flags 9>&- &
                pid=$!
                until tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null | grep -qF -- "$driver" \
                    || ! kill -0 "$pid" 2> /dev/null; do sleep 0.1; done
                flock -u 9
                wait "$pid" || echo "queue: $name ($driver) failed with exit status $?"
            done
        ) 9> "$claims/start" &
        pids+=($!)
    done
    for w in "${pids[@]}"; do wait "$w"; done
    rm -rf "$claims"
}

# the screening runs without a result yet, in the driver's order (references, then the
# candidates by promise): $1 = started (those with a run folder: interrupted at the last stop),
# fresh (the others) or extra (the MAP seeds 1-3)
pending_screen() {
    local name
    for name in $("$PY" benchmarks/c10_10k_screen.py --list); do
        [ -e "$SCREEN_RESULTS/$name.json" ] && continue
        if [[ $name == map-s* ]]; then
            [ "$1" = extra ] && echo "$name"
        elif [ -d "runs/c10-10k-screen/$name" ]; then
            [ "$1" = started ] && echo "$name"
        else
            [ "$1" = fresh ] && echo "$name"
        fi
    done
    return 0
}

# every job, in priority order
all_jobs() {
    local name c10=benchmarks/c10_10k.py unc=benchmarks/c10_10k_uncertainty.py
    for name in $(pending_screen started); do echo "benchmarks/c10_10k_screen.py $name"; done
    for name in $("$PY" "$c10" --list | grep '^hypernet-best-s' || true); do echo "$c10 $name"; done
    local screens=($(pending_screen fresh | grep -- '-bn-groups' || true)
                   $(pending_screen fresh | grep -v -- '-bn-groups' || true))
    echo "$c10 bayes-hypernet-s0"
    # the screening's new candidates on the full protocol: seed 0, the screens, the other seeds
    local candidates=($("$PY" "$c10" --list | grep '^hypernet-rank1-' | grep -v -- -normal- || true)
                      $("$PY" "$c10" --list | grep '^hypernet-rank1-normal-' || true))
    for name in "${candidates[@]}"; do [[ $name == *-s0 ]] && echo "$c10 $name"; done
    for name in "${screens[@]}"; do echo "benchmarks/c10_10k_screen.py $name"; done
    for seed in 1 2; do
        for name in "${candidates[@]}"; do [[ $name == *-s$seed ]] && echo "$c10 $name"; done
    done
    echo "$c10 swag-s0"
    echo "$c10 laplace-s0"
    for name in map-s0 map-s1 map-s2 map-s3; do echo "$unc $name --train-only"; done
    # map-s0's evaluation computes and keeps the members' curve; every later job trains its
    # run (when its folder is gone) and evaluates it at once, so each finishes a whole row
    echo "$unc map-s0"
    echo "$c10 map-s3"
    for name in $("$PY" "$unc" --list | grep -vx map-s0); do echo "$unc $name"; done
    for name in hypernet-uniform01-s1 hypernet-uniform01-s2; do echo "$c10 $name"; done
    for name in map-e120-s0 hypernet-normal-e120-s0 hypernet-uniform01-e120-s0; do
        echo "$c10 $name"
    done
    for name in $(pending_screen extra); do echo "benchmarks/c10_10k_screen.py $name"; done
}

mapfile -t all < <(all_jobs)
pool "${all[@]}"
for report in c10_10k_screen_report c10_10k_report c10_10k_cost_report \
    c10_10k_uncertainty_report; do
    nice -n 10 "$PY" "benchmarks/$report.py"
done
