#!/usr/bin/env bash
# A/B end to end, one run on this box: two gateways side by side, each one worker with the master
# key, in front of the fixed-reply nginx upstream of ../shared/bench; wrk drives them in turn.
#   A  the source tree of BASE (a git worktree, made on first use) or A_TREE, with A_ENV
#   B  the working tree, or B_TREE, or B_BASE's source tree (another worktree), with B_ENV
# Each round measures JSON and SSE at c=64, then at c=1 (for p50 latency), A and B alternating:
# each measurement is SLICES short wrk runs of each gateway, interleaved (ABBAA... in odd rounds,
# BAABB... in even ones), so that what else the box runs at the time weighs on both alike. It
# prints req/s, p50, p99 and the gateway's CPU time per request for each, with B/A per round; at
# the end the median B/A over the rounds (summary.py).
#   benchmarks/ab/run.sh                                  A = da23fed, B = the working tree
#   BASE=HEAD benchmarks/ab/run.sh                        A = the last commit, B = the working tree
#   B_BASE=HEAD benchmarks/ab/run.sh                      A = da23fed, B = the last commit
#   A_TREE=. A_ENV="TOKENWAY_X=0" benchmarks/ab/run.sh    two configurations of one tree
# Env: BASE (default da23fed), WORKTREE (where BASE is checked out, default /work/baseline),
# A_TREE, B_BASE, B_WORKTREE (default /work/ab-b), B_TREE, A_ENV, B_ENV ("NAME=value ..."),
# SECONDS_EACH (each variant's time per measurement, default 10), SLICES (default 5), ROUNDS
# (default 3), C1 (1: also the c=1 runs, default 1), PIN (1: gateways on core 0, nginx and wrk
# on core 1), PORT (A's; B's is the next, default 8471), UPSTREAM_PORT (default 9471).
# Both gateways run the same interpreter (this checkout's .venv) with PYTHONPATH set to their tree
# and PYTHONSAFEPATH=1, so each imports its own tree's tokenway; each logs which one it imported.
# Needs Debian's nginx and wrk.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd); shared=$root/../shared/bench
python=$root/.venv/bin/python
secs=${SECONDS_EACH:-10}; rounds=${ROUNDS:-3}; port=${PORT:-8471}; upstream_port=${UPSTREAM_PORT:-9471}
base=${BASE:-da23fed}; worktree=${WORKTREE:-/work/baseline}
read -r -a a_env <<<"${A_ENV:-}"; read -r -a b_env <<<"${B_ENV:-}"

checkout() { # commit-ish worktree: the worktree at that commit (made on first use); prints its path
  local commit; commit=$(git -C "$root" rev-parse --verify "$1^{commit}")
  if [ ! -e "$2" ]; then
    git -C "$root" worktree add --detach "$2" "$commit" >/dev/null 2>&1
  elif [ "$(git -C "$2" rev-parse HEAD)" != "$commit" ]; then
    git -C "$2" checkout --quiet --detach "$commit"
  fi
  echo "$2"
}
if [ -n "${A_TREE:-}" ]; then
  a_tree=$(cd "$A_TREE" && pwd); a_name=$a_tree
else
  a_tree=$(checkout "$base" "$worktree"); a_name="$base = $(git -C "$a_tree" log -1 --format='%h %s' | cut -c1-60)"
fi
if [ -n "${B_BASE:-}" ]; then
  b_tree=$(checkout "$B_BASE" "${B_WORKTREE:-/work/ab-b}")
  b_name="$B_BASE = $(git -C "$b_tree" log -1 --format='%h %s' | cut -c1-60)"
else
  b_tree=$(cd "${B_TREE:-$root}" && pwd); b_name="$b_tree"
  [ "$b_tree" = "$root" ] && b_name="the working tree, $(git -C "$root" log -1 --format=%h) + $(git -C "$root" status --porcelain -- tokenway | wc -l) changed files in tokenway/"
fi
run=$(mktemp -d); pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null; kill "$(cat "$run/nginx.pid" 2>/dev/null)" 2>/dev/null
  wait "${pids[@]}" 2>/dev/null; rm -rf "$run"
}
trap cleanup EXIT
gateway_cpu=(); load_cpu=()
if [ "${PIN:-0}" = 1 ]; then gateway_cpu=(taskset -c 0); load_cpu=(taskset -c 1); fi

sed -e "s|/tmp/mockup/|$run/|g" -e "s|127.0.0.1:9101|127.0.0.1:$upstream_port|" \
  -e "s|127.0.0.1:9102|127.0.0.1:$((upstream_port + 1))|" "$shared/mock-upstream.nginx.conf" >"$run/nginx.conf"
"${load_cpu[@]}" nginx -c "$run/nginx.conf" -p "$run/"
cat >"$run/tokenway.yaml" <<YAML
models:
  - name: mock-json
    deployments:
      - {provider: openai, api_base: "http://127.0.0.1:$upstream_port/json/v1", model: mock}
  - name: mock-sse
    deployments:
      - {provider: openai, api_base: "http://127.0.0.1:$upstream_port/sse/v1", model: mock}
logging: {requests: false}
YAML

# `python -m tokenway serve`, saying first which file tokenway was imported from (in the serving
# process itself: with one worker uvicorn imports the app there too).
serve='import sys, tokenway; print("tokenway imported from", tokenway.__file__, file=sys.stderr)
from tokenway.cli import main; main()'
start() { # name tree port extra-env...
  local name=$1 tree=$2 port=$3 log=$run/$1.log; shift 3
  (cd "$run" && exec "${gateway_cpu[@]}" env PYTHONPATH="$tree" PYTHONSAFEPATH=1 TOKENWAY_MASTER_KEY=sk-bench \
    TOKENWAY_DATA_DIR="$run/data-$name" "$@" "$python" -c "$serve" serve --config "$run/tokenway.yaml" \
    --port "$port" --workers 1 --log-level warning >"$log" 2>&1) &
  pids+=($!)
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.2; done
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null || { echo "gateway $name did not start"; cat "$log"; exit 1; }
  local imported; imported=$(awk '/tokenway imported from/{print $4}' "$log")
  [ "$imported" = "$tree/tokenway/__init__.py" ] || { echo "gateway $name imported $imported, not $tree"; exit 1; }
  echo "$name: port $port, tokenway from $imported${*:+, env $*}"
}
start A "$a_tree" "$port" "${a_env[@]}"; a_pid=${pids[-1]}
start B "$b_tree" "$((port + 1))" "${b_env[@]}"; b_pid=${pids[-1]}
echo "A = $a_name"; echo "B = $b_name"
echo "$secs s each, $rounds rounds, upstream 127.0.0.1:$upstream_port, $(nproc) cores, PIN=${PIN:-0}"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system time of a process
ticks=$(getconf CLK_TCK)
port_of() { if [ "$1" = A ]; then echo "$port"; else echo "$((port + 1))"; fi; }
pid_of() { if [ "$1" = A ]; then echo "$a_pid"; else echo "$b_pid"; fi; }
model_of() { if [ "$1" = sse ]; then echo "mock-sse true"; else echo "mock-json false"; fi; }
wrk_run() { # variant mode conns seconds [--latency]
  local model stream; read -r model stream <<<"$(model_of "$2")"
  BENCH_KEY=sk-bench BENCH_MODEL=$model BENCH_STREAM=$stream "${load_cpu[@]}" \
    wrk -t1 -c"$3" -d"$4s" ${5:-} -s "$shared/post.lua" "http://127.0.0.1:$(port_of "$1")/v1/chat/completions"
}
for variant in A B; do  # each gateway answers both kinds right, then warms up
  for mode in json sse; do
    read -r model stream <<<"$(model_of "$mode")"
    code=$(curl -s -o "$run/check" -w '%{http_code}' "http://127.0.0.1:$(port_of $variant)/v1/chat/completions" \
      -H 'authorization: Bearer sk-bench' -H 'content-type: application/json' \
      -d "{\"model\":\"$model\",\"stream\":$stream,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}")
    [ "$code" = 200 ] || { echo "$variant $mode: HTTP $code"; cat "$run/check"; tail -20 "$run/$variant.log"; exit 1; }
    wrk_run "$variant" "$mode" 64 2 >/dev/null
  done
done

ms() { # a wrk duration (850.00us, 1.23ms, 2.00s) in milliseconds
  awk -v d="${1%,}" 'BEGIN { n = d + 0; if (d ~ /us$/) n /= 1000; else if (d ~ /[0-9]s$/) n *= 1000; printf "%.3f", n }'
}
slices=${SLICES:-5}; slice_secs=$(( secs / slices > 0 ? secs / slices : 1 ))
table=$run/slices.tsv
measure() { # round mode conns first-variant second-variant: SLICES slices of each, alternating
  local slice variant out before after requests took bad errors
  for slice in $(seq "$slices"); do
    for variant in $([ $((slice % 2)) = 1 ] && echo "$4 $5" || echo "$5 $4"); do
      before=$(cpu_ticks "$(pid_of "$variant")")
      out=$(wrk_run "$variant" "$2" "$3" "$slice_secs" --latency)
      after=$(cpu_ticks "$(pid_of "$variant")")
      read -r requests took <<<"$(awk '/requests in/{print $1, $4}' <<<"$out")"
      bad=$(awk '/Non-2xx/{print $5}' <<<"$out"); errors=$(awk '/Socket errors/{print $4 + $6 + $8 + $10}' <<<"$out")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$variant" "$requests" "$(ms "$took")" \
        "$(ms "$(awk '$1=="50%"{print $2}' <<<"$out")")" "$(ms "$(awk '$1=="99%"{print $2}' <<<"$out")")" \
        "$(( (after - before) * 1000000 / ticks ))" "${bad:-0}" "${errors:-0}" >>"$table"
    done
  done
  "$python" "$here/summary.py" "$table" "$1" "$2" "$3"
}
conns_list="64"; [ "${C1:-1}" = 1 ] && conns_list="64 1"
for round in $(seq "$rounds"); do
  echo "round $round"
  for conns in $conns_list; do
    for mode in json sse; do
      if [ $((round % 2)) = 1 ]; then measure "$round" "$mode" "$conns" A B; else measure "$round" "$mode" "$conns" B A; fi
    done
  done
done
"$python" "$here/summary.py" "$table"
