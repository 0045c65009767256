#!/usr/bin/env bash
# `make demo` (dermadv reproduce --preset demo) on this machine in four conditions: 1 and 2 torch threads, with the
# machine idle and with one core taken by another process (a busy loop), each into OUT/<threads>t-<idle|busy>.
#   benchmarks/demo_conditions.sh OUT        then: python benchmarks/demo_table.py OUT
# LOADS="idle" or LOADS="busy" runs one pair; BUSY=external: the busy runs start no busy loop, because another job
# (one thread) already takes a core.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$1
V=.venv/bin
mkdir -p "$OUT"
for load in ${LOADS:-idle busy}; do
  for threads in 1 2; do
    run=$OUT/${threads}t-$load
    [ -f "$run/manifest.json" ] && grep -q '"status": "complete"' "$run/manifest.json" && continue
    rm -rf "$run"
    hog=
    if [ $load = busy ] && [ "${BUSY:-loop}" = loop ]; then $V/python -c "while True: pass" & hog=$!; fi
    start=$(date +%s)
    OMP_NUM_THREADS=$threads $V/dermadv reproduce --preset demo --out "$run" > "$run.log" 2>&1 || echo "error: $run failed; see $run.log" >&2
    echo "$(( $(date +%s) - start ))" > "$run.seconds"
    [ -n "$hog" ] && kill "$hog"
    echo "$run: $(cat "$run.seconds") s"
  done
done
