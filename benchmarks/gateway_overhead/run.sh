#!/usr/bin/env bash
# Gateway overhead, one run on this box: direct upstream vs an nginx hop vs tokenway (one process,
# master key on, default policies) vs a bare pass-through in Python with no policies (the issue's
# reference point, bare_passthrough.py; BARE=0 leaves it out) — and LiteLLM too when LITELLM_URL is
# set to a running proxy.
#   benchmarks/gateway_overhead/run.sh            (SECONDS_EACH, CONNS as in compare.sh)
# Needs Debian's nginx and wrk. Results: append the output to benchmarks/README.md by hand.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
compare=${COMPARE:-$root/../shared/bench/compare.sh}
port=${PORT:-8000}
export TOKENWAY_MASTER_KEY=${BENCH_KEY:-sk-bench}
"$root/.venv/bin/tokenway" serve --config "$here/tokenway.yaml" --port "$port" >/tmp/tokenway-bench.log 2>&1 &
pid=$!; bare_pid=; trap 'kill $pid $bare_pid 2>/dev/null || true' EXIT
bare_url=
if [ "${BARE:-1}" = 1 ]; then
  bare_port=$((port + 1)); bare_url=http://127.0.0.1:$bare_port/v1
  "$root/.venv/bin/python" "$here/bare_passthrough.py" --port "$bare_port" &
  bare_pid=$!
fi
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
rss_before=$(ps -o rss= -p "$(pgrep -P $pid -f tokenway || echo $pid)" 2>/dev/null | head -1 || true)
"$compare" ${bare_url:+"$bare_url"} "http://127.0.0.1:$port/v1" ${LITELLM_URL:+"$LITELLM_URL"}
echo "tokenway RSS (kB): before=${rss_before:-?} after=$(ps -o rss= -p $pid)"
