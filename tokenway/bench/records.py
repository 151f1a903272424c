"""Turn one raw Exchange into a RequestRecord with vLLM-compatible per-request metrics.

Definitions (times in seconds, `start` = just before the request is written):
  TTFT  = arrival of the first event carrying a token (non-empty content, reasoning or tool-call
          delta; `text` for completions) - start
  E2EL  = arrival of the last data event before [DONE] - start
  TPOT  = (E2EL - TTFT) / (N - 1), N = output tokens, only for N >= 2
  ITL   = gaps between consecutive token-carrying events; an event that carried k > 1 tokens
          contributes k gaps of gap/k (k from per-chunk usage when the server sends it, otherwise
          the final usage total shared out over events by their client-side token counts)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tokenway.bench.client import Exchange
from tokenway.bench.tokens import count_tokens
from tokenway.protocol import is_done, iter_sse_data


@dataclass
class RequestRecord:
    """Everything measured about one request; times are perf_counter seconds."""

    index: int
    session: int
    turn: int
    max_tokens: int
    start: float
    end: float
    scheduled: float | None = None  # intended send time (open-loop runs only)
    group: int | None = None
    warmup: bool = False
    status: int = 0
    error: str | None = None
    error_detail: str = ""
    ttft: float | None = None
    e2el: float | None = None
    token_times: list[float] = field(default_factory=list)
    event_tokens: list[int] = field(default_factory=list)
    output_tokens: int = 0
    output_source: str = "usage"  # "usage" (server) or "client" (tokenizer/estimate)
    client_tokens: int = 0
    server_tokens: int | None = None
    input_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.e2el is None or self.output_tokens < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def itls(self) -> list[float]:
        """Inter-token latencies with multi-token events split evenly (see module doc)."""
        out: list[float] = []
        times, ks = self.token_times, self.event_tokens
        for i in range(1, len(times)):
            k = max(1, ks[i])
            out.extend([(times[i] - times[i - 1]) / k] * k)
        return out

    def zero_gap_pairs(self) -> tuple[int, int]:
        """(pairs of consecutive token events that arrived in the same read, all pairs)."""
        t = self.token_times
        return sum(1 for i in range(1, len(t)) if t[i] == t[i - 1]), max(0, len(t) - 1)


def _token_text(choice: dict[str, Any]) -> tuple[str, bool]:
    """(text, carries_token) for one choice of a chunk."""
    delta = choice.get("delta")
    if delta is None:  # completions chunk, or a whole non-streamed reply
        msg = choice.get("message") or {}
        text = choice.get("text") or msg.get("content") or ""
        return text, bool(text) or bool(msg.get("tool_calls"))
    text = delta.get("content") or ""
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    tools = delta.get("tool_calls")
    tool_text = "".join(str((t.get("function") or {}).get("arguments") or "") for t in tools or [])
    return text + reasoning + tool_text, bool(text or reasoning or tools)


def _share(total: int, weights: list[int]) -> list[int]:
    """Split `total` tokens over events, each >= 1, proportional to weights (largest remainder)."""
    n = len(weights)
    if total <= n:
        return [1] * n
    spare = total - n
    # Every event carries its first token; the spare tokens follow each event's extra weight.
    extra = [max(0, w - 1) for w in weights]
    if not any(extra):
        extra = [1] * n
    wsum = sum(extra)
    raw = [spare * w / wsum for w in extra]
    base = [int(r) for r in raw]
    left = spare - sum(base)
    for i in sorted(range(n), key=lambda j: raw[j] - base[j], reverse=True)[:left]:
        base[i] += 1
    return [1 + b for b in base]


def build_record(ex: Exchange, rec: RequestRecord) -> RequestRecord:
    """Fill `rec` from the exchange: parse events, classify errors, compute TTFT/E2EL/tokens."""
    rec.start, rec.end, rec.status = ex.start, ex.end, ex.status
    if ex.error:
        rec.error, rec.error_detail = ex.error, ex.error_detail
        return rec
    if ex.status != 200:
        rec.error = f"http_{ex.status}"
        rec.error_detail = ex.body[:300].decode("utf-8", "replace")
        return rec
    pieces: list[str] = []
    cumulative: list[int | None] = []
    last_data_t = None
    usage: dict[str, Any] | None = None
    # The client cut the stream into events as they arrived; an event's payload keeps its arrival time.
    payloads = [(t, data) for t, raw in ex.events for data in iter_sse_data(raw)]
    for t, data in payloads:
        if is_done(data):
            continue
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            rec.error, rec.error_detail = "bad_json", data[:200].decode("utf-8", "replace")
            return rec
        last_data_t = t
        if not isinstance(obj, dict):
            continue
        if obj.get("error"):
            rec.error = "stream_error"
            rec.error_detail = orjson.dumps(obj["error"])[:300].decode()
            return rec
        if obj.get("usage"):
            usage = obj["usage"]
        for choice in obj.get("choices") or []:
            if choice.get("finish_reason"):
                rec.finish_reason = choice["finish_reason"]
            text, carries = _token_text(choice)
            if carries:
                rec.token_times.append(t)
                pieces.append(text)
                u = obj.get("usage")
                cumulative.append(u.get("completion_tokens") if isinstance(u, dict) else None)
    if not rec.token_times:
        rec.error, rec.error_detail = "no_tokens", "stream ended without a token-carrying event"
        return rec
    rec.text = "".join(pieces)
    rec.ttft = rec.token_times[0] - rec.start
    rec.e2el = (last_data_t or ex.end) - rec.start
    rec.client_tokens = count_tokens(rec.text)
    if usage and usage.get("prompt_tokens") is not None:
        rec.input_tokens = int(usage["prompt_tokens"])
    if usage and usage.get("completion_tokens") is not None:
        rec.server_tokens = int(usage["completion_tokens"])
        rec.output_tokens, rec.output_source = rec.server_tokens, "usage"
    else:
        rec.output_tokens, rec.output_source = max(rec.client_tokens, len(pieces)), "client"
    rec.event_tokens = _event_tokens(rec.output_tokens, pieces, cumulative)
    return rec


def _event_tokens(total: int, pieces: list[str], cumulative: list[int | None]) -> list[int]:
    if all(c is not None for c in cumulative):
        # Per-chunk (continuous) usage: each event's share is exact.
        out, prev = [], 0
        for c in cumulative:
            out.append(max(1, int(c or 0) - prev))
            prev = int(c or 0)
        return out
    return _share(total, [count_tokens(p) for p in pieces])
