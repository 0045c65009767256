#!/usr/bin/env bash
# Figures of "Audit any model": one classifier through every model source, measured side by side in one run.
#   [ONNX=model.onnx] benchmarks/audit_any_model.sh CHECKPOINT_OR_MODEL DATA OUT [CARD]
# A dermadv checkpoint is exported to ONNX first; any other model (TorchScript, ONNX with its card) is used as is.
# Steps: clean evaluation natively, through ONNX (onnx2torch) and over HTTP (onnxruntime behind a real server on
# 127.0.0.1); PGD-20 natively and through onnx2torch on a class-stratified sample; `dermadv audit` over HTTP
# (score-based), with the wall time split into the model's time and dermadv's own. Compare: benchmarks/compare_sources.py
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$1 DATA=$2 OUT=$3 CARD=${4:-}
V=.venv/bin
. scripts/serve_onnx.sh
LIMIT=${LIMIT:-210} AUDIT_LIMIT=${AUDIT_LIMIT:-70} QUERIES=${QUERIES:-1000} EPS=${EPS:-8/255}
SPLIT=${SPLIT_FILE:-$(dirname "$MODEL")/split.csv}
mkdir -p "$OUT"
CARD_ARGS=()
[ -n "$CARD" ] && CARD_ARGS=(--model-card "$CARD")
ONNX=${ONNX:-$MODEL}
if [[ $MODEL == *.safetensors ]]; then
  ONNX=$OUT/model.onnx
  $V/dermadv model export "$MODEL" --out "$ONNX"
fi
HTTP_CARD=$OUT/http.card.yaml
$V/dermadv model card "$ONNX" "${CARD_ARGS[@]}" --out "$HTTP_CARD"
if [[ $MODEL == *.safetensors ]]; then  # a dermadv export: send 8-bit pixels, which the server scales to [0, 1]
  sed -i 's/^value_range: 1$/value_range: 255/' "$HTTP_CARD"
  printf 'http:\n  protocol: v2\n  datatype: UINT8\n  batch_size: 64\n  concurrency: 2\n' >> "$HTTP_CARD"
else
  printf 'http:\n  protocol: v2\n  batch_size: 64\n  concurrency: 2\n' >> "$HTTP_CARD"
fi
serve_onnx "$ONNX" "$OUT/server.log"
URL=http://127.0.0.1:$PORT/v2/models/model/infer
common=(--data "$DATA" --split-file "$SPLIT")
# a step whose run folder is complete is kept (rerun with a new OUT to measure everything again)
done_() { $V/python -c "import json,sys; sys.exit(json.load(open('$1/manifest.json')).get('status') != 'complete')" 2>/dev/null; }
done_ "$OUT/clean-native" || $V/dermadv evaluate --model "$MODEL" "${CARD_ARGS[@]}" "${common[@]}" --split test --out "$OUT/clean-native"
done_ "$OUT/clean-onnx" || $V/dermadv evaluate --model "$ONNX" "${CARD_ARGS[@]}" "${common[@]}" --split test --out "$OUT/clean-onnx"
done_ "$OUT/clean-http" || $V/dermadv evaluate --model "$URL" --model-card "$HTTP_CARD" "${common[@]}" --split test --out "$OUT/clean-http"
pgd=(--method pgd --steps 20 --eps "$EPS" --target nv --limit "$LIMIT" "${common[@]}")
done_ "$OUT/pgd-native" || $V/dermadv attack run --model "$MODEL" "${CARD_ARGS[@]}" "${pgd[@]}" --out "$OUT/pgd-native"
done_ "$OUT/pgd-onnx2torch" || $V/dermadv attack run --model "$ONNX" "${CARD_ARGS[@]}" "${pgd[@]}" --out "$OUT/pgd-onnx2torch"
$V/python -c "import httpx; httpx.post('http://127.0.0.1:$PORT/stats/reset')"
$V/dermadv audit "$URL" --model-card "$HTTP_CARD" "${common[@]}" --limit "$AUDIT_LIMIT" --queries "$QUERIES" \
  --eps "$EPS" --out "$OUT/audit-http"
$V/python -c "import httpx, json; print(json.dumps(httpx.get('http://127.0.0.1:$PORT/stats').json()))" \
  > "$OUT/server-stats.json"
$V/python benchmarks/compare_sources.py "$OUT"
