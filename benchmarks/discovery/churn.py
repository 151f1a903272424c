"""Workers joining and leaving under traffic: how long a DNS change takes to reach routing, and what fails.

A gateway finds its workers by DNS (a test DNS server on 127.0.0.1); N workers on 127.0.0.2.. share one
port. Clients call the gateway throughout (half streamed). Each cycle takes one worker out of the
records or puts one back, and measures the time until routing sees it: for a join, until the worker
gets its first call; for a leave, until it is out of the model's deployments. Every call's outcome is
kept; a stream counts as failed unless it ends with [DONE].

    .venv/bin/python benchmarks/discovery/churn.py --cycles 20 --interval 0.5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.discovery_fakes import DnsServer, Worker
from tests.servers import free_port, running_app
from tests.test_discovery_dns import Traffic, wait_for, workers_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.5, help="discovery interval_s")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()

    dns = DnsServer().start()
    port = free_port()
    workers = [Worker(f"127.0.0.{i + 2}", port, chunk_delay=0.05).start() for i in range(args.workers)]
    listed = {w.host for w in workers}
    dns.set("workers.test", sorted(listed))
    config = f"""
models:
  - name: m
    deployments:
      - provider: openai
        model: served-model
        discovery: {{dns: workers.test, port: {port}, interval_s: {args.interval}, nameserver: "127.0.0.1:{dns.port}"}}
"""
    joins: list[float] = []
    leaves: list[float] = []
    in_flight_at_leave: list[int] = []
    rng = random.Random(7)
    try:
        with running_app(config) as (base, app):
            wait_for(lambda: len(workers_of(app)) == args.workers)
            traffic = Traffic(base, args.clients)
            time.sleep(1.0)
            for _ in range(args.cycles):
                out = [w for w in workers if w.host not in listed]
                if out and (len(listed) == 1 or rng.random() < 0.5):
                    worker = rng.choice(out)
                    before = worker.started
                    listed.add(worker.host)
                    dns.set("workers.test", sorted(listed))
                    joins.append(wait_for(lambda w=worker, b=before: w.started > b, timeout=30))
                else:
                    worker = rng.choice([w for w in workers if w.host in listed])
                    listed.discard(worker.host)
                    in_flight_at_leave.append(worker.active)
                    dns.set("workers.test", sorted(listed))
                    name = f"m#0@{worker.host}:{port}"
                    leaves.append(wait_for(lambda n=name: n not in workers_of(app), timeout=30))
                time.sleep(rng.uniform(0.2, 1.0))
            outcomes = traffic.stop()
    finally:
        for worker in workers:
            worker.stop()
        dns.stop()
    failed = [o for o in outcomes if o != (200, True)]
    result = {
        "workers": args.workers, "cycles": args.cycles, "interval_s": args.interval, "clients": args.clients,
        "calls": len(outcomes), "failed": len(failed),
        "join_s": _summary(joins), "leave_s": _summary(leaves),
        "calls_in_flight_on_leaving_worker": in_flight_at_leave,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": round(statistics.median(values), 3), "max": round(max(values), 3)}


if __name__ == "__main__":
    main()
