"""The numbers of run.sh, from its table of wrk slices.

    summary.py TABLE ROUND MODE CONNS   one round's measurement: each variant, and B/A
    summary.py TABLE                    the median B/A over the rounds, for each measurement

A table row is one wrk slice: round, mode, conns, variant, requests, milliseconds, p50 ms, p99 ms,
gateway CPU microseconds, non-2xx answers, socket errors. A variant's req/s is its requests over
its time, summed over its slices; its p50 and p99 are the medians of its slices' p50 and p99.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from statistics import median


@dataclass
class Measured:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # gateway CPU time per request
    failures: str  # non-2xx answers and socket errors, when any


def measured(rows: list[list[str]]) -> Measured:
    requests = sum(int(r[4]) for r in rows)
    bad = sum(int(r[9]) for r in rows)
    errors = sum(int(r[10]) for r in rows)
    return Measured(
        rps=requests / sum(float(r[5]) for r in rows) * 1000,
        p50_ms=median(float(r[6]) for r in rows),
        p99_ms=median(float(r[7]) for r in rows),
        cpu_us=sum(int(r[8]) for r in rows) / requests,
        failures=(f"  NON-2XX={bad}" if bad else "") + (f"  SOCKET-ERRORS={errors}" if errors else ""),
    )


def by_case(table: str) -> dict[tuple[str, str, str], dict[str, Measured]]:
    """(round, mode, conns) -> variant -> what it measured."""
    rows: dict[tuple[str, str, str, str], list[list[str]]] = {}
    with open(table) as lines:
        for row in csv.reader(lines, delimiter="\t"):
            rows.setdefault((row[0], row[1], row[2], row[3]), []).append(row)
    cases: dict[tuple[str, str, str], dict[str, Measured]] = {}
    for (round_, mode, conns, variant), slices in rows.items():
        cases.setdefault((round_, mode, conns), {})[variant] = measured(slices)
    return cases


def print_round(cases: dict[tuple[str, str, str], dict[str, Measured]], round_: str, mode: str, conns: str) -> None:
    variants = cases[(round_, mode, conns)]
    for name in ("A", "B"):
        m = variants[name]
        print(f"  {mode:4} c={conns:<3} {name}    rps={m.rps:<9.0f} p50={m.p50_ms:.3f}ms  p99={m.p99_ms:.3f}ms  "
              f"cpu_us/req={m.cpu_us:.1f}{m.failures}")
    a, b = variants["A"], variants["B"]
    print(f"  {mode:4} c={conns:<3} B/A  rps={b.rps / a.rps:.3f}     p50={b.p50_ms / a.p50_ms:.3f}    "
          f"p99={b.p99_ms / a.p99_ms:.3f}    cpu_us/req={b.cpu_us / a.cpu_us:.3f}")


def print_medians(cases: dict[tuple[str, str, str], dict[str, Measured]]) -> None:
    print("median over the rounds (B/A rps above 1: B faster; B/A p50 and cpu_us/req below 1: B cheaper)")
    for mode, conns in sorted({(m, c) for _, m, c in cases}, key=lambda k: (-int(k[1]), k[0])):
        rounds = sorted(r for r, m, c in cases if (m, c) == (mode, conns))
        runs = [cases[(r, mode, conns)] for r in rounds]
        ratios = [v["B"].rps / v["A"].rps for v in runs]
        print(
            f"  {mode:4} c={conns:<3} rps A {median(v['A'].rps for v in runs):.0f}  "
            f"B {median(v['B'].rps for v in runs):.0f}  B/A {median(ratios):.3f} "
            f"(rounds {', '.join(f'{x:.3f}' for x in ratios)})  "
            f"p50 A {median(v['A'].p50_ms for v in runs):.3f}ms B {median(v['B'].p50_ms for v in runs):.3f}ms  "
            f"p99 A {median(v['A'].p99_ms for v in runs):.2f}ms B {median(v['B'].p99_ms for v in runs):.2f}ms  "
            f"cpu_us/req B/A {median(v['B'].cpu_us / v['A'].cpu_us for v in runs):.3f}"
        )


if __name__ == "__main__":
    found = by_case(sys.argv[1])
    if len(sys.argv) > 2:
        print_round(found, *sys.argv[2:5])
    else:
        print_medians(found)
