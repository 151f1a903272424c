#!/usr/bin/env bash
# What metrics + the request log cost, end to end: the same gateway with observability on (the
# defaults) and off, alternating rounds against the fixed-reply upstream, wrk c=64, JSON and SSE.
#   benchmarks/gateway_overhead/observability_cost.sh      (ROUNDS, SECONDS_EACH)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); shared=${SHARED:-$root/../shared/bench}
rounds=${ROUNDS:-3}; secs=${SECONDS_EACH:-5}; port=${PORT:-8020}
run=$(mktemp -d); pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; kill $(cat "$run/nginx.pid" 2>/dev/null) 2>/dev/null; rm -rf "$run"' EXIT
sed "s|/tmp/mockup/|$run/|g" "$shared/mock-upstream.nginx.conf" > "$run/nginx.conf"
nginx -c "$run/nginx.conf" -p "$run/" 2>/dev/null || true   # reuse one already on 9101
cp "$here/tokenway.yaml" "$run/on.yaml"
{ cat "$here/tokenway.yaml"; printf 'logging: {requests: false}\nobservability: {metrics: false, overhead_header: false}\n'; } > "$run/off.yaml"
measure() { # config model stream
  "$root/.venv/bin/tokenway" serve --config "$run/$1.yaml" --port "$port" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  BENCH_MODEL=$2 BENCH_STREAM=$3 wrk -t1 -c64 -d2s -s "$shared/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
  local rps; rps=$(BENCH_MODEL=$2 BENCH_STREAM=$3 wrk -t1 -c64 -d"${secs}s" -s "$shared/post.lua" \
    "http://127.0.0.1:$port/v1/chat/completions" | awk '/Requests\/sec/{print $2}')
  kill $pid; wait $pid 2>/dev/null || true; pid=
  echo "$rps"
}
for shape in "mock-json false" "mock-sse true"; do
  set -- $shape
  for r in $(seq "$rounds"); do
    on=$(measure on "$1" "$2"); off=$(measure off "$1" "$2")
    awk -v m="$1" -v r="$r" -v on="$on" -v off="$off" \
      'BEGIN { printf "%-9s round %d  observability on %8.0f rps  off %8.0f rps  cost %5.1f%%\n", m, r, on, off, (off-on)/off*100 }'
  done
done
