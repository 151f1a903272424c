#!/usr/bin/env bash
# Cost of keys + rate limits + budget reservation on the hot path, one run on this box.
# Same build, same upstream (the fixed-reply nginx of ../shared/bench on 127.0.0.1:9201), wrk c=64:
#   master   master key: no key lookup, no limits, no budget (the usage ledger still records)
#   embedded virtual key with rpm, tpm and a $/day budget; in-memory counters, SQLite
#   redis    the same key; counters in Redis (two Lua calls and three settles per request)
# Needs Debian's nginx and wrk. Env: SECONDS_EACH (default 10).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); shared=$root/../shared/bench
secs=${SECONDS_EACH:-10}; port=${PORT:-8301}
run=$(mktemp -d); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; kill "$(cat "$run/nginx.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
sed -e "s|/tmp/mockup/|$run/|g" -e "s|127.0.0.1:9101|127.0.0.1:9201|" "$shared/mock-upstream.nginx.conf" > "$run/nginx.conf"
nginx -c "$run/nginx.conf" -p "$run/"
cat > "$run/tokenway.yaml" <<YAML
models:
  - name: mock-json
    deployments:
      - {provider: openai, api_base: "http://127.0.0.1:9201/json/v1", model: mock, price: {input_per_1m: 0.15, output_per_1m: 0.6}}
logging: {requests: false}
access: {redis_prefix: "tw-bench-$$:"}
YAML
start() { # extra env...
  env TOKENWAY_MASTER_KEY=sk-bench TOKENWAY_DATA_DIR="$run/data" "$@" \
    "$root/.venv/bin/tokenway" serve --config "$run/tokenway.yaml" --port "$port" --log-level warning >"$run/gw.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.1; done
  echo "gateway did not start"; cat "$run/gw.log"; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
measure() { # name key
  BENCH_KEY=$2 BENCH_MODEL=mock-json BENCH_STREAM=false wrk -t1 -c64 -d"${secs}s" -s "$shared/post.lua" \
    "http://127.0.0.1:$port/v1/chat/completions" >/dev/null  # warm-up
  local out; out=$(BENCH_KEY=$2 BENCH_MODEL=mock-json BENCH_STREAM=false wrk -t1 -c64 -d"${secs}s" --latency \
    -s "$shared/post.lua" "http://127.0.0.1:$port/v1/chat/completions")
  printf '%-9s rps=%-9s p50=%-8s p99=%-8s non2xx=%s\n' "$1" "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
    "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")" \
    "$(awk '/Non-2xx/{print $5}' <<<"$out" | grep . || echo 0)"
}
newkey() {
  curl -sf -X POST "http://127.0.0.1:$port/admin/keys" -H "Authorization: Bearer sk-bench" \
    -H 'content-type: application/json' \
    -d '{"rpm": 100000000, "tpm": 1000000000, "budget": "1000000/day", "team": "bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
start; measure master sk-bench; key=$(newkey); measure embedded "$key"; stop
start TOKENWAY_REDIS_URL=redis://127.0.0.1:6379/0; key=$(newkey); measure redis "$key"; stop
