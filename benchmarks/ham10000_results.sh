#!/usr/bin/env bash
# The run folders behind the README's results on HAM10000, made from one trained classifier, on 2 CPU cores:
# two queues of one thread each (two jobs with two threads each would spin against each other).
#   benchmarks/ham10000_results.sh DATA CLASSIFIER_RUN OUT
# e.g. benchmarks/ham10000_results.sh ../shared/data/HAM10000 runs/recipe runs
# CLASSIFIER_RUN is a finished `dermadv train --config recipes/ham10000-cpu.yaml` folder (model.safetensors,
# split.csv). Writes, under OUT:
#   CLASSIFIER_RUN/test, CLASSIFIER_RUN/test-tta  `dermadv evaluate` on the test split, without and with flip TTA
#   study            `dermadv reproduce --preset cpu`: the paper's protocol (generator fitted on the test images)
#   held-out/...     generators fitted on 1,500 train images (2 steps), then `attack sweep` of them and PGD-20 on
#                    the whole test split at 8/255 and 4/255
#   defences-real    benchmarks/defences_real.py: input transforms with adaptive attacks, smoothing, detector, card
# A finished folder is kept on a rerun (each command refuses or resumes its own). Then:
#   dermadv results CLASSIFIER_RUN/test ... --out docs/results.md      (make docs RUNS="...")
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1
CLF=$2
OUT=$3
V=.venv/bin
CKPT=$CLF/model.safetensors
export OMP_NUM_THREADS=1
mkdir -p "$OUT/held-out/generators"

complete() { [ -f "$1/manifest.json" ] && grep -q '"status": "complete"' "$1/manifest.json"; }

held_out() {  # $1: budget as a/255, $2: its folder tag (eps8_255)
  local gen=$OUT/held-out/generators/held-out-$2
  complete "$gen" || $V/dermadv attack fit --checkpoint "$CKPT" --data "$DATA" --fit-on train --max-fit-images 1500 \
    --eps "$1" --condition gradient --channels 16 --steps 2 --epochs 8 --batch-size 16 --lr 3e-3 \
    --gan-weight 0 --hinge-weight 0 --out "$gen"
  complete "$OUT/held-out/sweep-$2" || $V/dermadv attack sweep --checkpoint "$CKPT" --data "$DATA" \
    --methods advgan,pgd --eps "$1" --generators "$OUT/held-out/generators" --out "$OUT/held-out/sweep-$2"
}

queue_a() {
  complete "$CLF/test" || $V/dermadv evaluate --checkpoint "$CKPT" --data "$DATA" --split test --out "$CLF/test"
  complete "$CLF/test-tta" ||
    $V/dermadv evaluate --checkpoint "$CKPT" --data "$DATA" --split test --tta --out "$CLF/test-tta"
  complete "$OUT/study" ||
    $V/dermadv reproduce --data "$DATA" --preset cpu --checkpoint "$CKPT" --out "$OUT/study"
  held_out 8/255 eps8_255
}

queue_b() {
  complete "$OUT/defences-real" && [ -f "$OUT/defences-real/summary.json" ] ||
    $V/python benchmarks/defences_real.py --checkpoint "$CKPT" --data "$DATA" --out "$OUT/defences-real" --limit 140
  held_out 4/255 eps4_255
}

# QUEUES="a" or "b" runs one queue (e.g. the other core busy with something else)
pids=()
for q in ${QUEUES:-a b}; do
  "queue_$q" > "$OUT/results-$q.log" 2>&1 &
  pids+=("$q:$!")
done
status=0
for p in "${pids[@]}"; do
  wait "${p#*:}" || { echo "error: queue ${p%%:*} failed; see $OUT/results-${p%%:*}.log" >&2; status=1; }
done
exit $status
