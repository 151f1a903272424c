"""Per-request state that travels down the policy list and into the request log.

Every field says who writes it and who reads it; nothing is handed over through an untyped bag.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenway.protocol import Usage

if TYPE_CHECKING:
    from tokenway.deployments import Deployment
    from tokenway.replay.recording import Recording
    from tokenway.stores.base import KeyRecord
    from tokenway.tiers.policy import TierDecision


@dataclass(slots=True)
class CacheOutcome:
    """What the response cache did with the request (written by ``policies.cache``; read by the
    metrics, the log and ``/chat``'s ``cached``)."""

    status: str  # hit, miss, bypass, refresh, error
    match: str | None = None  # exact, semantic-verified, coalesced ... when it was a hit
    similarity: float | None = None  # a semantic hit's similarity


@dataclass(slots=True, frozen=True)
class ReleaseTag:
    """The release version a request went to (written by ``releases/policy.py``; read by the log)."""

    model: str  # the released model's public name
    version: str


@dataclass(slots=True, frozen=True)
class ContextShaped:
    """What context shaping did to a conversation too long for the model's window (written by
    ``policies.context_window``; read by the log and the metrics)."""

    strategy: str  # reject, trim, summarize
    tokens_before: int
    tokens_after: int  # equal to tokens_before when rejected
    turns_dropped: int  # turns removed (trim) or replaced by the summary (summarize)
    counted_by: str  # the counter: gguf, tiktoken:cl100k_base, hf:<file>, estimate
    summary: str | None = None  # summarize: made, cached, or failed (then trimmed)


@dataclass(slots=True, frozen=True)
class JobRef:
    """The job a request runs for (written by the job runner; read by access, which takes the job's
    owner as the caller, and by the ledger and the log)."""

    id: str
    owner: str  # the key id that submitted it, or "master" / "anonymous"
    batch_id: str | None = None


@dataclass(slots=True)
class RequestContext:
    # The front door (api/openai.py), from the request.
    request_id: str
    endpoint: str
    started: float = field(default_factory=time.perf_counter)
    deadline: float | None = None  # perf_counter() time after which the request has failed (set by the provider call)
    client_ip: str | None = None
    api_key: str | None = None  # the presented key, never logged
    cache_control: str | None = None  # the request's Cache-Control header (no-cache, no-store)
    priority: int = 0  # x-tokenway-priority: read by routing's admission queue (higher first)
    stream: bool = False
    content: str | None = None  # what the client asked, for content logging (only when it is on)
    trace_id: str | None = None  # the request span's trace id, when tracing is on (read by the log)
    job: JobRef | None = None  # set by the job runner: the request runs for a job, not a live caller
    session: str | None = None  # x-tokenway-session: who the caller is when no user or key says (releases)
    tier_override: str | None = None  # x-tokenway-tier: the tier the caller asks a router for
    # Access (policies/access.py): who is calling.
    key: KeyRecord | None = None  # the virtual key; None for the master key and anonymous callers
    key_alias: str | None = None  # who the key belongs to, safe to log
    # The prompts policy (tokenway/prompts/policy.py): the prompt version applied, as (id, version).
    prompt: tuple[str, int] | None = None
    # The response cache (policies/cache.py).
    cache: CacheOutcome | None = None
    # Releases (releases/policy.py): the version of a released model this request went to.
    release: ReleaseTag | None = None
    # Context shaping (policies/context_window.py), when the conversation did not fit the window.
    context_shaped: ContextShaped | None = None
    # The guards (guards/policy.py): each action taken, as "guard/stage/action" (read by the recorder).
    guard_actions: list[str] = field(default_factory=list)
    # The recorder (replay/recorder.py), when this request is recorded: its attempts and answer.
    recording: Recording | None = None
    # Small-model routing (tiers/policy.py): the tier picked, and what calls it dropped cost (access bills it).
    tier: TierDecision | None = None
    prior_cost_nanos: int = 0
    # Resilience and routing (policies/resilience.py, policies/routing.py).
    model: str | None = None  # public name of the model being tried (a fallback's, after a fallback)
    tried: set[str] = field(default_factory=set)  # deployments of that model tried by this request
    target: Deployment | None = None  # the deployment chosen for the current attempt
    deployment: str | None = None  # its name, for logs and metrics
    attempts: int = 0
    queue_wait_s: float | None = None  # time spent in the model's admission queue
    # The provider call and the stream writer (app.py, streaming.py).
    upstream_started: float | None = None  # the (last) call to the backend began
    upstream_done: float | None = None  # a non-streaming answer was complete
    upstream_first_at: float | None = None  # a stream's first block arrived from the backend
    first_token_at: float | None = None  # ... and was sent on to the client
    chunk_gaps: list[float] = field(default_factory=list)  # between streamed blocks, for ITL
    delivered_tokens: int = 0  # completion tokens a stream handed to the client (the stream writer counts them)
    usage: Usage | None = None  # what the backend reported (or, for a stream cut short, what was counted)
    responded: bool = False  # the last byte of the response was handed to the server
    # How it ended (the front door and the stream writer).
    status: int = 200
    error_type: str | None = None
    failed_mid_stream: bool = False  # the error came after the stream had started
    exception: BaseException | None = None  # a bug's exception, for the log's traceback
    cost_nanos: int | None = None  # what the request was charged (access settles it; metrics and the ledger read it)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    upstream_headers: dict[str, str] = field(default_factory=dict)  # e.g. traceparent, sent to the backend
    # Run once the response is complete, whatever happened (settling budgets, usage, metrics).
    finalizers: list[Callable[[RequestContext], Awaitable[None] | None]] = field(default_factory=list)
    finalizer_errors: list[str] = field(default_factory=list)

    def defer(self, finalizer: Callable[[RequestContext], Awaitable[None] | None]) -> None:
        """Run ``finalizer(ctx)`` after the response has been sent (also on errors and hang-ups)."""
        self.finalizers.append(finalizer)

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the request has none."""
        if self.deadline is None:
            return None
        return self.deadline - time.perf_counter()

    def overhead(self, now: float) -> float | None:
        """Seconds spent in the gateway itself: before the backend call, and relaying its answer."""
        if self.upstream_started is None:
            return now - self.started
        before = self.upstream_started - self.started
        if self.upstream_done is not None:
            return before + (now - self.upstream_done)
        if self.upstream_first_at is not None:
            return before + ((self.first_token_at or now) - self.upstream_first_at)
        return None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0
