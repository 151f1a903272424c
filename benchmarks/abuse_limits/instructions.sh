#!/usr/bin/env bash
# Instructions per request of the server protocol, base commit against the working tree: callgrind
# over protocol_cost.py --one at two request counts; the difference over the extra requests leaves
# start-up out. Needs valgrind.   benchmarks/abuse_limits/instructions.sh [BASE_COMMIT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(cd "$here/../.." && pwd)
base=${1:-8928022}; small=2000; large=6000; run=$(mktemp -d); trap 'rm -rf "$run"' EXIT
count() { # which requests -> instructions
  valgrind --tool=callgrind --callgrind-out-file="$run/out" "$root/.venv/bin/python" \
    "$here/protocol_cost.py" --one "$1" "$2" "$base" 2>&1 | awk '/Collected/{print $NF}'
}
for which in base now; do
  a=$(count "$which" $small); b=$(count "$which" $large)
  awk -v w="$which" -v a="$a" -v b="$b" -v n=$((large - small)) 'BEGIN { printf "%-4s %8.0f instructions per request\n", w, (b - a) / n }'
done
