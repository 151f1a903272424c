"""Semantic cache precision and miss latency, with the bundled MiniLM, on the labelled pairs.

    HF_HUB_OFFLINE=1 python benchmarks/semantic_cache/run.py [--pairs pairs.jsonl] [--json out.json]

For every pair, the *cached* question is in the index and the *query* arrives. A paraphrase
should hit; a near-miss (other numbers, names, negation, argument order, antonym, topic) must
not. Reported per threshold, without and with verification (``tokenway.cache.verify``):
hit rate (recall on paraphrases), false-hit rate (share of near-misses served), precision.
Then the latency a semantic *miss* adds to a request: embed + search of a 10k-entry scope +
verification of the candidates, through the same ``SemanticCache`` object the gateway uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenway.cache.semantic import Embedder, SemanticCache
from tokenway.cache.verify import mismatch

HERE = Path(__file__).parent
THRESHOLDS = [0.70, 0.75, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98]


def sweep(rows: list[dict[str, Any]], scores: np.ndarray, verified: list[bool]) -> list[dict[str, Any]]:
    out = []
    for t in THRESHOLDS:
        for verify in (False, True):
            tp = fp = 0
            for row, score, ok in zip(rows, scores, verified, strict=True):
                served = score >= t and (ok or not verify)
                if served and row["label"] == "hit":
                    tp += 1
                elif served:
                    fp += 1
            positives = sum(r["label"] == "hit" for r in rows)
            negatives = len(rows) - positives
            out.append({"threshold": t, "verify": verify, "hit_rate": tp / positives, "false_hit_rate": fp / negatives,
                        "precision": tp / (tp + fp) if tp + fp else 1.0, "true_hits": tp, "false_hits": fp})
    return out


async def miss_latency(embedder: Embedder, texts: list[str], n: int = 200) -> dict[str, float]:
    cache = SemanticCache(embedder, max_entries=20_000)
    rng = np.random.default_rng(0)
    filler = rng.normal(size=(10_000, 384)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    for i, vector in enumerate(filler):
        await cache.add("scope", f"filler question {i}", vector, f"key{i}", 3600)
    for text in texts[:20]:  # real neighbours too, so verification runs on some candidates
        await cache.add("scope", text, await cache.embed(text), "k-" + text, 3600)
    timings = []
    for i in range(n):
        query = f"{texts[i % len(texts)]} (variant {i})"
        started = time.perf_counter()
        vector = await cache.embed(query)
        await cache.search("scope", query, vector, 0.86)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {"p50_ms": statistics.median(timings), "p90_ms": timings[int(0.9 * n)], "p99_ms": timings[int(0.99 * n)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=HERE / "pairs.jsonl")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    started = time.perf_counter()
    embedder = Embedder.load()
    load_s = time.perf_counter() - started
    cached = embedder.encode([r["cached"] for r in rows])
    queries = embedder.encode([r["query"] for r in rows])
    scores = np.einsum("ij,ij->i", cached, queries)
    reasons = [mismatch(r["query"], r["cached"]) for r in rows]
    results = sweep(rows, scores, [reason is None for reason in reasons])
    latency = asyncio.run(miss_latency(embedder, [r["query"] for r in rows]))
    embedder.close()

    print(f"{len(rows)} pairs ({sum(r['label'] == 'hit' for r in rows)} paraphrases), model load {load_s:.1f}s")
    print(f"{'threshold':>9} {'verify':>6} {'hit rate':>8} {'false hits':>10} {'precision':>9}")
    for r in results:
        print(f"{r['threshold']:>9.2f} {'yes' if r['verify'] else 'no':>6} {r['hit_rate']:>8.1%} "
              f"{r['false_hit_rate']:>10.1%} {r['precision']:>9.1%}")
    by_kind: dict[str, list[float]] = {}
    for row, score in zip(rows, scores, strict=True):
        by_kind.setdefault(row["kind"], []).append(float(score))
    print("cosine by kind (median / min / max):")
    for kind, values in by_kind.items():
        print(f"  {kind:>10}: {statistics.median(values):.3f} / {min(values):.3f} / {max(values):.3f}  n={len(values)}")
    rejected: dict[str, dict[str, int]] = {}
    for row, reason in zip(rows, reasons, strict=True):
        if reason:
            rejected.setdefault(row["kind"], {}).setdefault(reason, 0)
            rejected[row["kind"]][reason] += 1
    print("verification rejections by kind:", json.dumps(rejected))
    print(f"semantic miss adds: p50 {latency['p50_ms']:.2f} ms, p90 {latency['p90_ms']:.2f} ms, "
          f"p99 {latency['p99_ms']:.2f} ms (10k-entry scope)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "latency": latency, "rejected": rejected}, indent=1))


if __name__ == "__main__":
    main()
