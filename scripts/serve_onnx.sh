# Sourced by scripts/audit_demo.sh and benchmarks/audit_any_model.sh (with V set to the venv's bin folder):
#   serve_onnx MODEL.onnx LOG   starts `dermadv model serve` on a free port of 127.0.0.1, waits until it is ready,
#                               sets PORT, and stops the server when the calling script exits.
serve_onnx() {
  PORT=$($V/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  $V/dermadv model serve "$1" --port "$PORT" > "$2" 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 60); do
    $V/python -c "import httpx; httpx.get('http://127.0.0.1:$PORT/v2/health/ready').raise_for_status()" 2>/dev/null \
      && return 0
    sleep 0.5
  done
  echo "error: dermadv model serve $1 did not become ready; see $2" >&2
  return 1
}
