#!/usr/bin/env bash
# Cost of keys + rate limits + budget reservation, counted in CPU instructions per request.
# Throughput on a shared 2-core box moves by ±30% between windows (see RESULTS.md); the number of
# instructions a process executes per request does not. Each gateway runs under valgrind's
# callgrind, which counts every instruction of the process (all threads); wrk sends the same
# requests as run.sh (c=64, the fixed-reply nginx upstream), counters are zeroed after a warm-up
# and read after the measured window, and the count, less what the process does idle in the same
# time, is divided by the requests wrk completed.
#   master   master key: no key lookup, no limits, no budget (the usage ledger still records)
#   embedded virtual key with rpm, tpm and a $/day budget; in-memory counters, SQLite
#   master-r master key on the gateway that keeps its counters in Redis (that gateway's baseline)
#   redis    the same key; counters in Redis (redis-server's own CPU is reported beside it)
# Needs Debian's nginx, wrk and valgrind. Env: SECONDS_EACH (default 20), ROUNDS (default 2),
# KEEP (a folder to keep each window's callgrind profile in, for callgrind_annotate), COMPILED=1 (the
# deployment wheel, see common.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); shared=$root/../shared/bench
secs=${SECONDS_EACH:-20}; rounds=${ROUNDS:-2}; port=${PORT:-8311}
upstream_port=9211; source "$here/common.sh"
nginx -c "$run/nginx.conf" -p "$run/"
start() { # port data-dir extra env...
  local port=$1 data=$2; shift 2
  env TOKENWAY_MASTER_KEY=sk-bench TOKENWAY_DATA_DIR="$data" "$@" \
    valgrind --tool=callgrind --callgrind-out-file="$data.cg" --dump-instr=no --collect-jumps=no \
    "$root/.venv/bin/python" -m tokenway serve --config "$run/tokenway.yaml" --port "$port" --log-level warning \
    >"$data.log" 2>&1 &
  pids+=($!)
  wait_ready "$port" "$data.log"
}
instructions() { # callgrind-out-file: the Ir total of the newest dump
  awk '/^(summary|totals):/{print $2}' "$(ls -t "$1".* | head -1)" | tail -1
}
idle_rate() { # gateway-pid data-dir: instructions per second with no requests (timers, key refresh)
  local t0 t1
  callgrind_control -z "$1" >/dev/null 2>&1; t0=$(date +%s.%N)
  sleep "$secs"
  callgrind_control -d "$1" >/dev/null 2>&1; t1=$(date +%s.%N)
  python3 -c "print(int($(instructions "$2.cg") / ($t1 - $t0)))"
}
measure() { # name port key gateway-pid data-dir idle-rate
  local url="http://127.0.0.1:$2/v1/chat/completions" out requests ir t0 t1 redis_before redis_after
  BENCH_KEY=$3 BENCH_MODEL=mock-json BENCH_STREAM=false wrk -t1 -c64 -d5s --timeout 60s -s "$shared/post.lua" "$url" >/dev/null
  callgrind_control -z "$4" >/dev/null 2>&1; t0=$(date +%s.%N)
  redis_before=$(cpu_ticks "$redis_pid")
  out=$(BENCH_KEY=$3 BENCH_MODEL=mock-json BENCH_STREAM=false wrk -t1 -c64 -d"${secs}s" --timeout 60s -s "$shared/post.lua" "$url")
  redis_after=$(cpu_ticks "$redis_pid")
  callgrind_control -d "$4" >/dev/null 2>&1; t1=$(date +%s.%N)
  requests=$(awk '/requests in/{print $1}' <<<"$out")
  ir=$(instructions "$5.cg")
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$(ls -t "$5.cg".* | head -1)" "$KEEP/$1.r$round.$requests.cg"; fi
  # What the process does per second without requests is taken out: under valgrind it runs at ~1/20th
  # of its real rate, so timers would otherwise weigh 20 times what they weigh at full speed.
  printf '%-9s requests=%-6s non2xx=%-4s instructions_per_request=%-9s redis_cpu_us_per_request=%s\n' "$1" "$requests" \
    "$(awk '/Non-2xx/{print $5}' <<<"$out" | grep . || echo 0)" \
    "$(python3 -c "print(int(($ir - $6 * ($t1 - $t0)) / $requests))")" \
    "$(( (redis_after - redis_before) * 1000000 / ticks / requests ))"
}
start "$port" "$run/memory"; memory_pid=${pids[-1]}
start "$((port + 1))" "$run/redis" TOKENWAY_REDIS_URL=redis://127.0.0.1:6379/0; redis_gateway_pid=${pids[-1]}
memory_key=$(newkey "$port"); redis_key=$(newkey "$((port + 1))")
memory_idle=$(idle_rate "$memory_pid" "$run/memory"); redis_idle=$(idle_rate "$redis_gateway_pid" "$run/redis")
echo "idle instructions per second: memory gateway $memory_idle, Redis gateway $redis_idle"
for round in $(seq "$rounds"); do
  echo "round $round"
  measure master "$port" sk-bench "$memory_pid" "$run/memory" "$memory_idle" | tee -a "$run/rows"
  measure embedded "$port" "$memory_key" "$memory_pid" "$run/memory" "$memory_idle" | tee -a "$run/rows"
  measure master-r "$((port + 1))" sk-bench "$redis_gateway_pid" "$run/redis" "$redis_idle" | tee -a "$run/rows"
  measure redis "$((port + 1))" "$redis_key" "$redis_gateway_pid" "$run/redis" "$redis_idle" | tee -a "$run/rows"
done
# Each round's windows move by a few percent on their own; the mean over the rounds is the number to quote.
awk '{ split($4, kv, "="); sum[$1] += kv[2] }
     END { printf "all %d rounds: embedded %+.1f%%, Redis %+.1f%% (mean instructions per request over the master key'"'"'s)\n",
           NR / 4, (sum["embedded"] / sum["master"] - 1) * 100, (sum["redis"] / sum["master-r"] - 1) * 100 }' "$run/rows"
