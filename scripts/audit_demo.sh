#!/usr/bin/env bash
# make audit-demo: export the demo classifier to ONNX, serve it over HTTP on 127.0.0.1 (KServe v2, onnxruntime),
# and audit it black-box end to end; the server's own query counter is printed beside the audit's.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin
. scripts/serve_onnx.sh
OUT=${OUT:-runs/audit-demo}
CLF=runs/demo/classifier/model.safetensors  # `make demo`'s classifier, else a fresh one of the demo preset
if [ ! -f "$CLF" ]; then
  CLF=$OUT/classifier/model.safetensors
  [ -f "$CLF" ] || $V/dermadv train --preset demo --out "$OUT/classifier"
fi
$V/dermadv model export "$CLF" --out "$OUT/model.onnx"
$V/dermadv model card "$OUT/model.onnx" --out "$OUT/http.card.yaml"
sed -i 's/^value_range: 1$/value_range: 255/' "$OUT/http.card.yaml"  # 8-bit pixels, scaled by the server
printf 'http:\n  protocol: v2\n  datatype: UINT8\n  batch_size: 64\n  concurrency: 2\n' >> "$OUT/http.card.yaml"
serve_onnx "$OUT/model.onnx" "$OUT/server.log"
$V/dermadv audit "http://127.0.0.1:$PORT/v2/models/model/infer" --model-card "$OUT/http.card.yaml" \
  --out "$OUT/audit" --limit 70 --queries 1000 --eps 8/255
$V/python -c "import httpx; print('server counted:', httpx.get('http://127.0.0.1:$PORT/stats').json())"
