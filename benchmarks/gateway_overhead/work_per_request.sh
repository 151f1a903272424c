#!/usr/bin/env bash
# What one request costs the gateway in work that does not depend on how busy the box is:
# user-space instructions (valgrind's callgrind) and system calls (strace -c), per request, for
# one or more source trees side by side, JSON or SSE, master key, default policies.
#   benchmarks/gateway_overhead/work_per_request.sh [TREE ...]   (default: this checkout)
# A TREE is a checkout of tokenway (e.g. `git worktree add /tmp/old <commit>`); it runs with this
# checkout's .venv. req/s on a shared 2-core box moves by ±20% between windows; these counts move
# by a few percent, so a change of 5% in the gateway's own work can be seen.
# Needs Debian's nginx, wrk, valgrind and strace. Env: SECONDS_EACH (default 15), STREAM (false),
# CONNS (64).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); shared=$root/../shared/bench
secs=${SECONDS_EACH:-15}; stream=${STREAM:-false}; conns=${CONNS:-64}; port=${PORT:-8801}; upstream_port=9231
trees=("$@"); [ ${#trees[@]} -gt 0 ] || trees=("$root")
model=mock-json; [ "$stream" = true ] && model=mock-sse
run=$(mktemp -d); pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; kill "$(cat "$run/nginx.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
sed -e "s|/tmp/mockup/|$run/|g" -e "s|127.0.0.1:9101|127.0.0.1:$upstream_port|" "$shared/mock-upstream.nginx.conf" > "$run/nginx.conf"
sed "s|127.0.0.1:9101|127.0.0.1:$upstream_port|" "$here/tokenway.yaml" > "$run/tokenway.yaml"
nginx -c "$run/nginx.conf" -p "$run/"
url="http://127.0.0.1:$port/v1/chat/completions"
load() { BENCH_KEY=sk-bench BENCH_MODEL=$model BENCH_STREAM=$stream wrk -t1 -c"$conns" -d"$1s" --timeout 60s -s "$shared/post.lua" "$url"; }
serve() { # tree wrapper... : start the gateway of that tree under the wrapper, wait until ready
  local tree=$1; shift
  (cd "$tree" && PYTHONPATH=$tree TOKENWAY_MASTER_KEY=sk-bench TOKENWAY_DATA_DIR="$run/data-$RANDOM" TOKENWAY_DRAIN_DELAY_S=0 \
    exec "$@" "$root/.venv/bin/python" -m tokenway serve --config "$run/tokenway.yaml" --port "$port" \
    --log-level warning) >"$run/gateway.log" 2>&1 &
  pid=$!
  for _ in $(seq 900); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return; sleep 0.2; done
  echo "gateway did not start"; cat "$run/gateway.log"; exit 1
}
stop() { # strace ignores signals while it runs a program: stop the program itself, strace then exits
  kill -INT $(pgrep -P "$pid") "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; pid=
}
for tree in "${trees[@]}"; do
  serve "$tree" valgrind --tool=callgrind --callgrind-out-file="$run/cg" --dump-instr=no --collect-jumps=no
  load 5 >/dev/null  # warm-up: imports, connections, caches
  callgrind_control -z "$pid" >/dev/null 2>&1
  requests=$(load "$secs" | awk '/requests in/{print $1}')
  callgrind_control -d "$pid" >/dev/null 2>&1
  ir=$(awk '/^(summary|totals):/{print $2}' "$(ls -t "$run"/cg.* | head -1)" | tail -1)
  stop; rm -f "$run"/cg*
  serve "$tree" strace -f -c -U name,calls -o "$run/strace.txt"
  load 3 >/dev/null
  requests_s=$(load "$secs" | awk '/requests in/{print $1}')
  stop
  # strace counts the whole run (start-up and warm-up too): the per-request syscalls that matter
  # (send/recv/write/read/epoll) dwarf start-up's after a few thousand requests.
  syscalls=$(awk -v n="$requests_s" '$2 ~ /^[0-9]+$/ && $1 != "total" && $2 > n / 10 { printf "%s=%.2f ", $1, $2 / n }' "$run/strace.txt")
  printf '%s %s c=%s: instructions/request=%d (%d requests) | syscalls/request (of %d requests): %s\n' \
    "$tree" "$model" "$conns" "$((ir / requests))" "$requests" "$requests_s" "$syscalls"
done
