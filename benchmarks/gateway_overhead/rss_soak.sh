#!/usr/bin/env bash
# Memory over a long run: N requests (default 1,000,000) through one tokenway process against the
# fixed-reply upstream, alternating JSON and SSE; RSS sampled every 10 s.
#   benchmarks/gateway_overhead/rss_soak.sh [TOTAL_REQUESTS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
shared=${SHARED:-$root/../shared/bench}
total=${1:-1000000}; port=${PORT:-8010}
run=$(mktemp -d)
sed "s|/tmp/mockup/|$run/|g" "$shared/mock-upstream.nginx.conf" > "$run/nginx.conf"
nginx -c "$run/nginx.conf" -p "$run/" 2>/dev/null || true   # reuse one already on 9101
TOKENWAY_MASTER_KEY=sk-bench "$root/.venv/bin/tokenway" serve --config "$here/tokenway.yaml" --port "$port" >/dev/null 2>&1 &
pid=$!; trap 'kill $pid 2>/dev/null; kill $(cat "$run/nginx.pid" 2>/dev/null) 2>/dev/null; rm -rf "$run"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
done_requests=0; start=$(date +%s)
printf 'requests  rss_kb\n'
while [ "$done_requests" -lt "$total" ]; do
  for model in mock-json mock-sse; do
    stream=$([ $model = mock-sse ] && echo true || echo false)
    n=$(BENCH_MODEL=$model BENCH_STREAM=$stream wrk -t1 -c32 -d5s -s "$shared/post.lua" \
        "http://127.0.0.1:$port/v1/chat/completions" | awk '/requests in/{print $1}')
    done_requests=$((done_requests + n))
  done
  printf '%-9s %s\n' "$done_requests" "$(ps -o rss= -p $pid | tr -d ' ')"
done
echo "elapsed_s=$(( $(date +%s) - start ))"
