"""Semantic cache precision and miss latency, with the bundled MiniLM, on the labelled pairs.

    HF_HUB_OFFLINE=1 python benchmarks/semantic_cache/run.py [--pairs pairs.jsonl] [--json out.json] \\
        [--backends onnxruntime,torch] [-n 200]

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


def percentiles(timings: list[float]) -> dict[str, float]:
    timings = sorted(timings)
    n = len(timings)
    return {"p50_ms": statistics.median(timings), "p90_ms": timings[int(0.9 * n)], "p99_ms": timings[int(0.99 * n)]}


async def miss_latency(embedders: dict[str, Embedder], texts: list[str], n: int) -> dict[str, dict[str, Any]]:
    """Per embedder: a miss end to end (embed on its thread + search + verify), the encode alone
    on the calling thread, and a repeated question (served from the embedder's recent vectors).
    The embedders take turns query by query, so load on this shared box hits them alike."""
    rng = np.random.default_rng(0)
    filler = rng.normal(size=(10_000, 384)).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    caches = {}
    for name, embedder in embedders.items():
        cache = caches[name] = SemanticCache(embedder, max_entries=20_000)
        for i, vector in enumerate(filler):
            await cache.add("scope", f"filler question {i}", vector, f"key{i}", 3600)
        for text in texts[:20]:  # real neighbours too, so verification runs on some candidates
            await cache.add("scope", text, await cache.embed(text), "k-" + text, 3600)
    miss: dict[str, list[float]] = {name: [] for name in embedders}
    encode: dict[str, list[float]] = {name: [] for name in embedders}
    repeat: dict[str, list[float]] = {name: [] for name in embedders}
    for i in range(n):
        query = f"{texts[i % len(texts)]} (variant {i})"
        for name, cache in caches.items():
            started = time.perf_counter()
            embedders[name].encode([query + "?"])
            encode[name].append((time.perf_counter() - started) * 1000)
            for timings in (miss[name], repeat[name]):  # the second time, the vector is a recent one
                started = time.perf_counter()
                vector = await cache.embed(query)
                await cache.search("scope", query, vector, 0.86)
                timings.append((time.perf_counter() - started) * 1000)
    return {name: {"miss": percentiles(miss[name]), "encode_inline": percentiles(encode[name]),
                   "repeat": percentiles(repeat[name])} for name in embedders}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=Path, default=HERE / "pairs.jsonl")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--backends", default="onnxruntime,torch",
                        help="embedders to time side by side; the first one's vectors give the precision table")
    parser.add_argument("-n", type=int, default=200, help="timed misses per embedder")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.pairs.read_text().splitlines() if line.strip()]
    embedders, load_s = {}, {}
    for backend in args.backends.split(","):
        started = time.perf_counter()
        embedders[backend] = Embedder.load(backend)
        load_s[backend] = time.perf_counter() - started
    embedder = next(iter(embedders.values()))
    cached = embedder.encode([r["cached"] for r in rows])
    queries = embedder.encode([r["query"] for r in rows])
    scores = np.einsum("ij,ij->i", cached, queries)
    for name, other in embedders.items():  # the table holds for every backend, or says it does not
        drift = np.abs(np.einsum("ij,ij->i", other.encode([r["cached"] for r in rows]),
                                 other.encode([r["query"] for r in rows])) - scores).max()
        print(f"{name}: model load {load_s[name]:.1f}s, "
              f"pair cosines differ from {embedder.backend}'s by <= {drift:.1e}")
    reasons = [mismatch(r["query"], r["cached"]) for r in rows]
    results = sweep(rows, scores, [reason is None for reason in reasons])
    latency = asyncio.run(miss_latency(embedders, [r["query"] for r in rows], args.n))
    for other in embedders.values():
        other.close()

    print(f"{len(rows)} pairs ({sum(r['label'] == 'hit' for r in rows)} paraphrases), vectors from {embedder.backend}")
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
    print("what a semantic miss adds (10k-entry scope), ms:")
    for name, parts in latency.items():
        for part, label in (("miss", "miss, end to end"), ("encode_inline", "encode only, inline"),
                            ("repeat", "repeated question")):
            t = parts[part]
            print(f"  {name:>11} {label:>20}: p50 {t['p50_ms']:6.2f}  p90 {t['p90_ms']:6.2f}  p99 {t['p99_ms']:6.2f}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "latency": latency, "rejected": rejected}, indent=1))


if __name__ == "__main__":
    main()
