# What run.sh needs: the fixed-reply nginx upstream, the gateway config, a
# virtual key with rpm, tpm and a budget, and reading a process's CPU time. Sourced, not run.
# Expects: root, shared, upstream_port. Gives: run (a temporary folder, removed at exit with the
# processes in pids and the nginx started there).
run=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; kill "$(cat "$run/nginx.pid" 2>/dev/null)" 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
sed -e "s|/tmp/mockup/|$run/|g" -e "s|127.0.0.1:9101|127.0.0.1:$upstream_port|" "$shared/mock-upstream.nginx.conf" > "$run/nginx.conf"
cat > "$run/tokenway.yaml" <<YAML
models:
  - name: mock-json
    deployments:
      - {provider: openai, api_base: "http://127.0.0.1:$upstream_port/json/v1", model: mock, price: {input_per_1m: 0.15, output_per_1m: 0.6}}
logging: {requests: false}
access: {redis_prefix: "tw-bench-$$:"}
YAML
wait_ready() { # port log
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && return; sleep 0.2; done
  echo "gateway did not start"; cat "$2"; exit 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # user + system time of a process, all threads
newkey() { # port
  curl -sf -X POST "http://127.0.0.1:$1/admin/keys" -H "Authorization: Bearer sk-bench" \
    -H 'content-type: application/json' \
    -d '{"rpm": 100000000, "tpm": 1000000000, "budget": "1000000/day", "team": "bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
ticks=$(getconf CLK_TCK); redis_pid=$(pgrep -o redis-server)
