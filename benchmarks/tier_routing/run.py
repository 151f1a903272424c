"""Small-model routing on the labelled prompts: accuracy, saving against always-large, decision cost.

    HF_HUB_OFFLINE=1 python benchmarks/tier_routing/run.py [--json results.json] [--plot sweep.svg]

``prompts.tsv`` holds the labelled set (label, category, prompt; earlier user turns of a
conversation come before ``||``; the ``tools`` category is sent with a tool declared). Each prompt
becomes a chat request body and is scored through the gateway's own ``TierRouter``, on three tiers
priced from ``tokenway/prices.py``: simple -> gpt-4.1-nano, medium -> gpt-4.1-mini,
complex -> gpt-4.1.

- heuristic: the scorer as shipped, on every prompt (its weights were fitted by hand on this same
  set: an in-sample number).
- neighbours: 5-fold cross-validation; each fold is scored by a router whose samples are the
  other four folds (a prompt never votes for itself); the shipped scorer averages that vote with
  the heuristic.

Cost: prompt tokens are characters / 4 (``tokenway.usage.cost``'s estimate); completion tokens
are assumed per label (simple 80, medium 300, complex 900), the same whichever tier answers.
Decision cost: ``TierRouter.score`` + ``for_score`` per request, the least of five timings of each
prompt on this (shared, 2-core) box; the neighbours embed runs on the calling thread here, as its
encode does on the embedder's thread in the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from tokenway.prices import PRICES
from tokenway.tiers.neighbours import PREFIX_CHARS, NeighbourScorer
from tokenway.tiers.options import TierRouterConfig
from tokenway.tiers.policy import TierRouter

HERE = Path(__file__).parent
LABELS = ["simple", "medium", "complex"]
MODELS = ["gpt-4.1-nano", "gpt-4.1-mini", "gpt-4.1"]
COMPLETION_TOKENS = {"simple": 80, "medium": 300, "complex": 900}
WEATHER_TOOL = {"type": "function", "function": {"name": "lookup", "description": "Look something up.",
                                                 "parameters": {"type": "object", "properties": {}}}}


def load(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        label, category, prompt = line.split("\t")
        *history, last = [turn.strip() for turn in prompt.split("||")]
        messages: list[dict[str, Any]] = []
        for turn in history:
            messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "Sure."}]
        messages.append({"role": "user", "content": last})
        body: dict[str, Any] = {"model": "auto", "messages": messages}
        if category == "tools":
            body["tools"] = [WEATHER_TOOL]
        rows.append({"label": label, "category": category, "body": body, "text": last,
                     "chars": sum(len(m["content"]) for m in messages)})
    return rows


def router(up_to: tuple[float, float]) -> TierRouter:
    return TierRouter(TierRouterConfig.model_validate({"name": "auto", "tiers": [
        {"model": MODELS[0], "up_to": up_to[0]}, {"model": MODELS[1], "up_to": up_to[1]}, {"model": MODELS[2]}]}))


def cost(row: dict[str, Any], tier: int) -> float:
    price_in, price_out = PRICES[MODELS[tier]]
    return (row["chars"] / 4 * price_in + COMPLETION_TOKENS[row["label"]] * price_out) / 1e6


def evaluate(rows: list[dict[str, Any]], tiers: list[int]) -> dict[str, Any]:
    wanted = [LABELS.index(row["label"]) for row in rows]
    routed = sum(cost(row, tier) for row, tier in zip(rows, tiers, strict=True))
    large = sum(cost(row, 2) for row in rows)
    oracle = sum(cost(row, tier) for row, tier in zip(rows, wanted, strict=True))
    n = len(rows)
    by_category: dict[str, list[bool]] = {}
    for row, tier, want in zip(rows, tiers, wanted, strict=True):
        by_category.setdefault(row["category"], []).append(tier == want)
    return {
        "accuracy": sum(t == w for t, w in zip(tiers, wanted, strict=True)) / n,
        "under_routed": sum(t < w for t, w in zip(tiers, wanted, strict=True)) / n,  # the quality risk
        "over_routed": sum(t > w for t, w in zip(tiers, wanted, strict=True)) / n,  # money left on the table
        "complex_kept_large": sum(t == 2 for t, w in zip(tiers, wanted, strict=True) if w == 2)
        / max(1, wanted.count(2)),
        "saving_vs_large": 1 - routed / large,
        "oracle_saving_vs_large": 1 - oracle / large,
        "cost_routed_usd": routed, "cost_large_usd": large,
        "accuracy_by_category": {c: sum(v) / len(v) for c, v in sorted(by_category.items())},
        "tiers_used": [tiers.count(i) for i in range(3)],
    }


async def timed_scores(
    tiers: TierRouter, bodies: list[dict[str, Any]], repeats: int = 1
) -> tuple[list[int], list[float], list[float]]:
    """Each body's tier, and its decision time, wall-clock and this thread's CPU time: the least of
    ``repeats`` timings each (the decision's own work, with as little as possible of what else the
    shared box was doing then; CPU time leaves out the waits for a core)."""
    picks, walls, cpus = [], [], []
    for body in bodies:
        wall = cpu = float("inf")
        for _ in range(repeats):
            started, started_cpu = time.perf_counter(), time.thread_time()
            score, _ = await tiers.score(body)
            pick = tiers.for_score(score)
            cpu = min(cpu, (time.thread_time() - started_cpu) * 1000)
            wall = min(wall, (time.perf_counter() - started) * 1000)
        picks.append(pick)
        walls.append(wall)
        cpus.append(cpu)
    return picks, walls, cpus


def percentiles(walls: list[float], cpus: list[float]) -> dict[str, float]:
    out = {}
    for name, timings in (("wall", walls), ("cpu", cpus)):
        ordered = sorted(timings)
        out |= {f"{name}_p50_ms": statistics.median(ordered), f"{name}_p99_ms": ordered[int(0.99 * (len(ordered) - 1))],
                f"{name}_mean_ms": statistics.fmean(ordered)}
    return out


class ThreadlessEmbedder:
    """The embedder's encode on the calling thread, so the timing is the decision's own work."""

    def __init__(self, embedder: Any) -> None:
        self._embedder = embedder

    async def embed(self, text: str) -> Any:
        from tokenway.cache.semantic import normalise

        return self._embedder.encode([normalise(text)])[0]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=Path, default=HERE / "prompts.tsv")
    parser.add_argument("--up-to", type=float, nargs=2, default=(0.15, 0.5), help="the heuristic's thresholds")
    parser.add_argument("--neighbours-up-to", type=float, nargs=2, default=(0.2, 0.55))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--no-neighbours", action="store_true")
    args = parser.parse_args()
    rows = load(args.prompts)
    bodies = [row["body"] for row in rows]
    heuristic = router(tuple(args.up_to))
    await timed_scores(heuristic, bodies)  # warm the regexes and the interpreter
    picks, walls, cpus = await timed_scores(heuristic, bodies, repeats=5)
    report: dict[str, Any] = {"prompts": len(rows), "labels": {label: [r["label"] for r in rows].count(label)
                                                                for label in LABELS},
                              "up_to": args.up_to, "heuristic": {**evaluate(rows, picks), **percentiles(walls, cpus)},
                              "load_average": os.getloadavg()}
    sweep = []
    for first in [x / 100 for x in range(5, 50, 5)]:
        sweep_picks, _, _ = await timed_scores(router((first, max(first + 0.05, args.up_to[1]))), bodies)
        sweep.append({"small_up_to": first, **{k: v for k, v in evaluate(rows, sweep_picks).items()
                                               if k in ("accuracy", "under_routed", "saving_vs_large")}})
    report["heuristic_sweep"] = sweep
    if not args.no_neighbours:
        report["neighbours"] = await neighbours(rows, tuple(args.neighbours_up_to))
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot:
        plot(sweep, args.plot)


async def neighbours(rows: list[dict[str, Any]], up_to: tuple[float, float]) -> dict[str, Any]:
    from tokenway.cache.semantic import Embedder, normalise

    embedder = Embedder.load()
    vectors = embedder.encode([normalise(row["text"][:PREFIX_CHARS]) for row in rows])  # as NeighbourScorer.build
    scores = [{"simple": 0.0, "medium": 0.5, "complex": 1.0}[row["label"]] for row in rows]
    picks: list[int] = [0] * len(rows)
    walls: list[float] = []
    cpus: list[float] = []
    folds = 5
    for fold in range(folds):
        train = [i for i in range(len(rows)) if i % folds != fold]
        tiers = router(up_to)
        tiers.neighbours = NeighbourScorer(ThreadlessEmbedder(embedder), vectors[train],  # type: ignore[arg-type]
                                           np.array([scores[i] for i in train], dtype=np.float32), k=7)
        held = [i for i in range(len(rows)) if i % folds == fold]
        fold_picks, fold_walls, fold_cpus = await timed_scores(tiers, [rows[i]["body"] for i in held], repeats=5)
        for i, pick in zip(held, fold_picks, strict=True):
            picks[i] = pick
        walls += fold_walls
        cpus += fold_cpus
    longest = max((row["text"] for row in rows), key=len)
    encode_ms = {}
    for chars in (40, PREFIX_CHARS, 600):  # why the vote reads a prefix: the encode grows with the text
        best = float("inf")
        for _ in range(20):
            started = time.perf_counter()
            embedder.encode([longest[:chars]])
            best = min(best, (time.perf_counter() - started) * 1000)
        encode_ms[chars] = best
    return {**evaluate(rows, picks), **percentiles(walls, cpus), "up_to": up_to, "backend": embedder.backend,
            "encode_ms_by_chars": encode_ms,
            "samples_per_fold": len(rows) * (folds - 1) // folds}


def plot(sweep: list[dict[str, Any]], path: Path) -> None:
    """The threshold sweep as an SVG line chart (the bench report's own plotting)."""
    from tokenway.plots import line_chart

    xs = [s["small_up_to"] for s in sweep]
    series = [(name, xs, [s[key] for s in sweep]) for key, name in (
        ("accuracy", "accuracy"), ("under_routed", "under-routed (quality risk)"),
        ("saving_vs_large", "saving vs always gpt-4.1"))]
    path.write_text(line_chart(series, "Heuristic tier routing on the labelled prompts",
                               "first tier's up_to (heuristic score)", "share", markers=True, ymin=0.0))


if __name__ == "__main__":
    asyncio.run(main())
