#!/usr/bin/env bash
# The runs of "accurate and diverse at once", in order, each resumable: the c10-10k-screen
# candidates and references, their report, then the 120-epoch MAP / N(0,1) / U(0,1) runs.
# Finished runs are skipped and a killed one resumes, so rerun this to continue.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nice -n 10 "$PY" benchmarks/c10_10k_screen.py
nice -n 10 "$PY" benchmarks/c10_10k_screen_report.py
nice -n 10 "$PY" benchmarks/c10_10k.py --only map-e120-s0 hypernet-normal-e120-s0 \
    hypernet-uniform01-e120-s0
