#!/usr/bin/env bash
# The GPU benchmark of issue 3 in one command: an 8B Llama-shaped model with random weights (bf16),
# 512 requests x (256 in, 128 out), all at once, in three phases run one after the other, each in
# its own process (so each gets the whole GPU):
#   raw      plain transformers generate_batch (the reference)
#   engine   tokenway's TransformersEngine in-process, no HTTP
#   gateway  `tokenway serve` + 512 concurrent streaming HTTP requests (aiohttp)
#
#   benchmarks/gpu/run_gpu_bench.sh [OUT_DIR]
#
# Knobs (env): PHASES, REQUESTS, INPUT_TOKENS, OUTPUT_TOKENS, CONTEXT_WINDOW, MAX_BATCH_TOKENS,
# PRESET (llama-8b | tiny), DEVICE, DTYPE, RAW_ARGS, PORT, PYSPY_S (seconds of py-spy on the server
# during the gateway phase, from PYSPY_AFTER_S after it is ready; needs py-spy on PATH; off when
# unset: it samples without stopping the process, but costs a core). A CPU smoke run of the whole pipeline:
#   PRESET=tiny DEVICE=cpu DTYPE=float32 REQUESTS=16 INPUT_TOKENS=64 OUTPUT_TOKENS=16 \
#   CONTEXT_WINDOW=128 RAW_ARGS="--num-blocks 128" benchmarks/gpu/run_gpu_bench.sh /tmp/smoke
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT_DIR=${1:-${OUT:-/tmp/tokenway-gpu-bench}}
PHASES=${PHASES:-"raw engine gateway"}
REQUESTS=${REQUESTS:-512}
INPUT_TOKENS=${INPUT_TOKENS:-256}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-128}
CONTEXT_WINDOW=${CONTEXT_WINDOW:-512}
PRESET=${PRESET:-llama-8b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
PORT=${PORT:-8765}
MODEL_DIR=${MODEL_DIR:-/tmp/tokenway-$PRESET}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mkdir -p "$OUT_DIR"
python3 "$ROOT/tests/fixtures/make_tiny_llama.py" --preset "$PRESET" "$MODEL_DIR" || exit 1
{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c 'import sys, torch, transformers; print(sys.version.split()[0], torch.__version__, transformers.__version__)'
} | tee "$OUT_DIR/env.txt"

common=(--model "$MODEL_DIR" --requests "$REQUESTS" --input-tokens "$INPUT_TOKENS" --output-tokens "$OUTPUT_TOKENS")
engine_args=(--context-window "$CONTEXT_WINDOW" ${MAX_BATCH_TOKENS:+--max-batch-tokens "$MAX_BATCH_TOKENS"})

run_gateway() {
  local config="$OUT_DIR/tokenway.yaml"
  cat >"$config" <<EOF
models:
  - name: llama-8b-dummy
    deployments:
      - provider: local
        engine: transformers
        model_path: $MODEL_DIR
        load_format: dummy
        device: $DEVICE
        dtype: $DTYPE
        context_window: $CONTEXT_WINDOW
        slots: $REQUESTS
        queue_size: $REQUESTS
${MAX_BATCH_TOKENS:+        max_batch_tokens: $MAX_BATCH_TOKENS}
        timeouts: {first_token: 600, idle: 120, total: 1800}
EOF
  python3 -m tokenway check-config "$config" || return 1
  python3 -m tokenway serve --config "$config" --port "$PORT" >"$OUT_DIR/server.log" 2>&1 &
  local server=$!
  local profiler=
  if [ -n "${PYSPY_S:-}" ]; then
    profile_server "$server" &
    profiler=$!
  fi
  python3 "$HERE/http_load.py" "${common[@]}" --model-name llama-8b-dummy \
    --base-url "http://127.0.0.1:$PORT" --server-pid "$server" --json "$OUT_DIR/gateway.json"
  local status=$?
  [ -n "$profiler" ] && wait "$profiler"
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
  tail -n 5 "$OUT_DIR/server.log" | cut -c1-400
  return $status
}

# Samples of every thread of the server, idle ones included (a thread waiting for the GIL counts as
# idle: idle samples in pure-Python frames of the batching thread are time lost to the event loop).
profile_server() {
  local ready="import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"
  until python3 -c "$ready" "http://127.0.0.1:$PORT/ready" 2>/dev/null; do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 1
  done
  sleep "${PYSPY_AFTER_S:-30}"
  py-spy record --pid "$1" --duration "$PYSPY_S" --rate 200 --threads --idle --nonblocking --format raw \
    --output "$OUT_DIR/gateway-pyspy.txt" >"$OUT_DIR/pyspy.log" 2>&1 || tail -n 3 "$OUT_DIR/pyspy.log"
}

for phase in $PHASES; do
  echo "== $phase"
  case $phase in
    raw) python3 "$HERE/raw_generate_batch.py" "${common[@]}" --device "$DEVICE" --dtype "$DTYPE" \
           --json "$OUT_DIR/raw.json" ${RAW_ARGS:-} 2>"$OUT_DIR/raw.log" || tail -n 20 "$OUT_DIR/raw.log" ;;
    engine) python3 "$HERE/engine_direct.py" "${common[@]}" "${engine_args[@]}" --device "$DEVICE" \
              --dtype "$DTYPE" --json "$OUT_DIR/engine.json" 2>"$OUT_DIR/engine.log" \
              || tail -n 20 "$OUT_DIR/engine.log" ;;
    gateway) run_gateway ;;
    *) echo "unknown phase $phase (raw, engine, gateway)" >&2 ;;
  esac
done
python3 "$HERE/report.py" "$OUT_DIR" | tee "$OUT_DIR/report.txt"
