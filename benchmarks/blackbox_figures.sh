#!/usr/bin/env bash
# Figures of "Black-box and transfer attacks": query-based and transfer attacks on a classifier served over HTTP on
# 127.0.0.1, targeted to nv, scored from the saved 8-bit PNGs, queries counted by the server.
#   [SURROGATES=a,b] [LIMIT=288] [QUERIES=1000] [HSJ_LIMIT=70] [HSJ_QUERIES=10000] [STEPS="..."] \
#     benchmarks/blackbox_figures.sh MODEL.onnx HTTP_CARD DATA SPLIT_FILE OUT
# MODEL.onnx with HTTP_CARD (its card with an `http:` section; benchmarks/audit_any_model.sh writes one) is served by
# `dermadv model serve`; each step is a `dermadv attack run` into OUT/<step>, the server's counter beside it in
# OUT/<step>.server.json. SURROGATES (comma-separated white-box models that never saw the target's weights) enable
# the transfer steps: one per surrogate, their ensemble, and transfer-then-query. A step may name its own sample size
# after an @ (square-2@140: budgets whose images mostly spend the whole budget cost more queries). The table:
# benchmarks/blackbox_table.py.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1 CARD=$2 DATA=$3 SPLIT=$4 OUT=$5
V=.venv/bin
. scripts/serve_onnx.sh
LIMIT=${LIMIT:-288} QUERIES=${QUERIES:-1000} HSJ_LIMIT=${HSJ_LIMIT:-70} HSJ_QUERIES=${HSJ_QUERIES:-10000}
SURROGATES=${SURROGATES:-}
STEPS=${STEPS:-"square-2 square-4 square-8 simba-4 transfer transfer-square-8 hopskipjump-8"}
mkdir -p "$OUT"
serve_onnx "$MODEL" "$OUT/server.log"
URL=http://127.0.0.1:$PORT/v2/models/model/infer
stats() { $V/python -c "import httpx, json; print(json.dumps(httpx.${1}('http://127.0.0.1:$PORT/stats${2:-}').json()))"; }
done_() { $V/python -c "import json,sys; sys.exit(json.load(open('$1/manifest.json')).get('status') != 'complete')" 2>/dev/null; }
# one attack run against the endpoint; a step whose folder is complete is kept (a new OUT measures all again)
step() {
  local name=$1; shift
  done_ "$OUT/$name" && return 0
  stats post /reset > /dev/null
  $V/dermadv attack run --model "$URL" --model-card "$CARD" --data "$DATA" --split-file "$SPLIT" --target nv \
    --out "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 || { echo "error: step $name failed; see $OUT/$name.log" >&2; return 1; }
  stats get > "$OUT/$name.server.json"
  echo "$name: $(tail -n 1 "$OUT/$name.log")"
}
for s in $STEPS; do
  limit=$LIMIT hsj_limit=$HSJ_LIMIT
  if [[ $s == *@* ]]; then limit=${s#*@} hsj_limit=${s#*@} s=${s%@*}; fi
  case $s in
    square-l2-*) step "$s" --method square --param norm=l2 --eps "${s#square-l2-}" --queries "$QUERIES" --limit "$limit" --batch-size "$limit" ;;
    square-*) step "$s" --method square --eps "${s#square-}/255" --queries "$QUERIES" --limit "$limit" --batch-size "$limit" ;;
    simba-*) step "$s" --method simba --eps "${s#simba-}/255" --queries "$QUERIES" --limit "$limit" --batch-size "$limit" ;;
    transfer)
      [ -n "$SURROGATES" ] || { echo "transfer: skipped (no SURROGATES)"; continue; }
      IFS=, read -ra each <<< "$SURROGATES"
      i=0
      for sur in "${each[@]}"; do
        i=$((i + 1))
        step "transfer-$i" --method mi-di --eps 8/255 --param "surrogates=$sur" --limit "$limit"
      done
      [ ${#each[@]} -gt 1 ] && step transfer-ensemble --method mi-di --eps 8/255 --param "surrogates=$SURROGATES" \
        --limit "$limit"
      ;;
    transfer-square-*)
      [ -n "$SURROGATES" ] || { echo "$s: skipped (no SURROGATES)"; continue; }
      step "$s" --method transfer-square --eps "${s#transfer-square-}/255" --param "surrogates=$SURROGATES" \
        --queries "$QUERIES" --limit "$limit" --batch-size "$limit"
      ;;
    hopskipjump-*) step "$s" --method hopskipjump --threat-model decision-based --eps "${s#hopskipjump-}/255" \
      --queries "$HSJ_QUERIES" --limit "$hsj_limit" --batch-size "$hsj_limit" ;;
    *) echo "error: unknown step $s" >&2; exit 2 ;;
  esac
done
$V/python benchmarks/blackbox_table.py "$OUT"
