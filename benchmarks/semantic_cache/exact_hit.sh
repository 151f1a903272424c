#!/usr/bin/env bash
# Exact-cache hit path vs the no-cache path vs the upstream itself, one run on this box.
#   benchmarks/semantic_cache/exact_hit.sh        (SECONDS_EACH default 5, CONNS default "1 64")
# Upstream: the fixed-reply nginx of ../shared/bench on 127.0.0.1:9101. tokenway: one process,
# master key on, in-memory cache. temperature 0.7 = bypass (no cache), 0 = hits after the first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
shared=${SHARED_BENCH:-$root/../shared/bench}
secs=${SECONDS_EACH:-5}; conns=${CONNS:-"1 64"}; port=${PORT:-8010}
export BENCH_KEY=${BENCH_KEY:-sk-bench} TOKENWAY_MASTER_KEY=${BENCH_KEY:-sk-bench}
run=$(mktemp -d)
sed "s|/tmp/mockup/|$run/|g" "$shared/mock-upstream.nginx.conf" > "$run/nginx.conf"
nginx -c "$run/nginx.conf" -p "$run/"
"$root/.venv/bin/tokenway" serve --config "$root/benchmarks/gateway_overhead/tokenway.yaml" --port "$port" \
  >"$run/tokenway.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; kill $(cat "$run/nginx.pid" 2>/dev/null) 2>/dev/null || true; rm -rf "$run"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
measure() { # name url model stream temperature conns
  local out
  out=$(BENCH_MODEL=$3 BENCH_STREAM=$4 BENCH_TEMPERATURE=$5 wrk -t1 -c"$6" -d"${secs}s" --latency \
        -s "$here/post.lua" "$2" 2>&1)
  printf '%-22s %-6s c=%-3s rps=%-9s p50=%-9s p99=%-9s non2xx=%s\n' "$1" "$4" "$6" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" "$(awk '$1=="50%"{print $2}' <<<"$out")" \
    "$(awk '$1=="99%"{print $2}' <<<"$out")" "$(awk '/Non-2xx/{print $5}' <<<"$out")"
}
gw="http://127.0.0.1:$port/v1/chat/completions"
for c in $conns; do
  for kind in "mock-json false json" "mock-sse true sse"; do
    set -- $kind
    measure "direct-upstream" "http://127.0.0.1:9101/$3/v1/chat/completions" "$1" "$2" 0.7 "$c"
    measure "tokenway-no-cache" "$gw" "$1" "$2" 0.7 "$c"
    measure "tokenway-exact-hit" "$gw" "$1" "$2" 0 "$c"
  done
done
