#!/usr/bin/env bash
# Cost of keys + rate limits + budget reservation on the hot path, one run on this box.
# Same build, same upstream (the fixed-reply nginx of ../shared/bench on 127.0.0.1:9201), wrk c=64:
#   master   master key: no key lookup, no limits, no budget (the usage ledger still records)
#   embedded virtual key with rpm, tpm and a $/day budget; in-memory counters, SQLite
#   redis    the same key; counters in Redis (one Lua call per request before its answer, one settle
#            after it, merged with other requests' settles, on one pipelined connection)
# Two gateways run side by side (memory and Redis counters); the three variants are measured in turn,
# ROUNDS times, so that the box's drift hits all three alike. Compare within a round.
# Needs Debian's nginx and wrk. Env: SECONDS_EACH (default 10), ROUNDS (default 3), PIN (0).
# BASE=<commit>: also an embedded gateway from that commit's source tree (a git worktree under the
# temporary folder, same venv), measured in every round as "embedded@BASE": a same-run A/B of the
# access path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); shared=$root/../shared/bench
secs=${SECONDS_EACH:-10}; rounds=${ROUNDS:-3}; port=${PORT:-8301}
upstream_port=9201; source "$here/common.sh"
# PIN=1: the gateways on core 0, nginx and wrk on core 1 (less noise from sharing a core with the load).
gateway_cpu=(); load_cpu=()
if [ "${PIN:-0}" = 1 ]; then gateway_cpu=(taskset -c 0); load_cpu=(taskset -c 1); fi
"${load_cpu[@]}" nginx -c "$run/nginx.conf" -p "$run/"
start() { # port data-dir extra env...
  local port=$1 data=$2; shift 2
  "${gateway_cpu[@]}" env TOKENWAY_MASTER_KEY=sk-bench TOKENWAY_DATA_DIR="$data" "$@" \
    "$root/.venv/bin/tokenway" serve --config "$run/tokenway.yaml" --port "$port" --log-level warning >"$data.log" 2>&1 &
  pids+=($!)
  wait_ready "$port" "$data.log"
}
measure() { # name port key gateway-pid
  local url="http://127.0.0.1:$2/v1/chat/completions" out before after redis_before redis_after requests
  BENCH_KEY=$3 BENCH_MODEL=mock-json BENCH_STREAM=false "${load_cpu[@]}" wrk -t1 -c64 -d2s -s "$shared/post.lua" "$url" >/dev/null  # warm-up
  before=$(cpu_ticks "$4"); redis_before=$(cpu_ticks "$redis_pid")
  out=$(BENCH_KEY=$3 BENCH_MODEL=mock-json BENCH_STREAM=false "${load_cpu[@]}" wrk -t1 -c64 -d"${secs}s" --latency -s "$shared/post.lua" "$url")
  after=$(cpu_ticks "$4"); redis_after=$(cpu_ticks "$redis_pid")
  requests=$(awk '/requests in/{print $1}' <<<"$out")
  # CPU per request is what the box's noise moves least: req/s also depends on what else got the cores.
  printf '%-9s rps=%-9s p50=%-8s p99=%-8s non2xx=%s gateway_cpu_us=%s redis_cpu_us=%s\n' "$1" \
    "$(awk '/Requests\/sec/{print $2}' <<<"$out")" \
    "$(awk '$1=="50%"{print $2}' <<<"$out")" "$(awk '$1=="99%"{print $2}' <<<"$out")" \
    "$(awk '/Non-2xx/{print $5}' <<<"$out" | grep . || echo 0)" \
    "$(( (after - before) * 1000000 / ticks / requests ))" "$(( (redis_after - redis_before) * 1000000 / ticks / requests ))"
}
start "$port" "$run/memory"; memory_pid=${pids[-1]}
if [ -n "${BASE:-}" ]; then
  git -C "$root" worktree add --detach "$run/base" "$BASE" >/dev/null 2>&1
  trap 'cleanup; git -C "$root" worktree remove --force "$run/base" 2>/dev/null' EXIT
  start "$((port + 2))" "$run/based" PYTHONPATH="$run/base" PYTHONSAFEPATH=1; base_pid=${pids[-1]}
  base_key=$(newkey "$((port + 2))")
fi
start "$((port + 1))" "$run/redis" TOKENWAY_REDIS_URL=redis://127.0.0.1:6379/0; redis_gateway_pid=${pids[-1]}
memory_key=$(newkey "$port"); redis_key=$(newkey "$((port + 1))")
for round in $(seq "$rounds"); do
  echo "round $round"
  measure master "$port" sk-bench "$memory_pid"
  measure embedded "$port" "$memory_key" "$memory_pid"
  if [ -n "${BASE:-}" ]; then measure "embedded@$BASE" "$((port + 2))" "$base_key" "$base_pid"; fi
  measure redis "$((port + 1))" "$redis_key" "$redis_gateway_pid"
done
