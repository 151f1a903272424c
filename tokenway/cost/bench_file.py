"""What ``tokenway cost`` reads from a ``tokenway bench`` results file (docs/bench-results-format.md):
the throughput at each load point, goodput under the run's SLO, and the requests' token counts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError


class BenchFileError(ValueError):
    """A file that is not a bench results file; the message names the field."""


class _Request(BaseModel):
    warmup: bool
    error: str | None
    input_tokens: int | None
    output_tokens: int


class _Goodput(BaseModel):
    slo_ms: dict[str, float]
    req_s: float


class _Concurrency(BaseModel):
    peak: int
    mean: float


class _Summary(BaseModel):
    label: str
    request_throughput: float
    output_throughput: float
    concurrency: _Concurrency
    goodput: _Goodput | None = None


class _Shape(BaseModel):
    concurrency: int | None


class _Run(BaseModel):
    shape: _Shape
    summary: _Summary
    requests: list[_Request]


class _Document(BaseModel):
    tool: Literal["tokenway bench"]
    format_version: Literal[1]
    config: dict[str, Any]
    runs: Annotated[list[_Run], Field(min_length=1)]


@dataclass(frozen=True, slots=True)
class LoadPoint:
    """One run of the sweep: what one replica sustained at this concurrency."""

    label: str
    concurrency: int
    requests_per_s: float
    output_tokens_per_s: float
    goodput_per_s: float | None  # requests/s that met the run's SLO, when the run had one

    @property
    def capacity(self) -> float:
        """Requests per second this point counts for: goodput under an SLO, else all completed."""
        return self.requests_per_s if self.goodput_per_s is None else self.goodput_per_s


@dataclass(frozen=True, slots=True)
class BenchResults:
    path: str
    model: str
    slo_ms: dict[str, float]
    points: list[LoadPoint]
    prompt_tokens: list[int]
    completion_tokens: list[int]

    @property
    def best(self) -> LoadPoint:
        return max(self.points, key=lambda p: p.capacity)


def load(path: Path) -> BenchResults:
    try:
        raw = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise BenchFileError(f"{path}: cannot read the bench file ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise BenchFileError(f"{path}: not JSON ({exc}); write one with `tokenway bench --json FILE`") from None
    try:
        doc = _Document.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
        raise BenchFileError(
            f"{path}: not a tokenway bench results file (format_version 1): {field or '(top level)'}: "
            f"{error['msg']}"
        ) from None
    answered = [r for run in doc.runs for r in run.requests if not r.warmup and r.error is None]
    slos = [run.summary.goodput.slo_ms for run in doc.runs if run.summary.goodput is not None]
    results = BenchResults(
        path=str(path),
        model=str(doc.config.get("model", "")),
        slo_ms=slos[0] if slos else {},
        points=[
            LoadPoint(
                run.summary.label,
                run.shape.concurrency or max(1, round(run.summary.concurrency.mean)),
                run.summary.request_throughput,
                run.summary.output_throughput,
                run.summary.goodput.req_s if run.summary.goodput is not None else None,
            )
            for run in doc.runs
        ],
        prompt_tokens=[r.input_tokens for r in answered if r.input_tokens is not None],
        completion_tokens=[r.output_tokens for r in answered],
    )
    if results.best.capacity <= 0:
        met = "met its SLO" if results.slo_ms else "completed"
        raise BenchFileError(f"{path}: no request of any run {met}: there is no throughput to size replicas by")
    return results
