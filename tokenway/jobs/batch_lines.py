"""The Batch API's file formats: the input's JSONL lines in, the output and error files out.

Input lines are ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body": {...}}``.
A line that is not valid goes to the error file with its line number and the reason; it never
fails the batch. Output lines are OpenAI's:
``{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from tokenway.errors import GatewayError, InvalidRequest
from tokenway.jobs.records import ENDPOINTS, KINDS, Job


@dataclass(slots=True)
class InputLine:
    line: int  # 1-based
    custom_id: str | None
    body: bytes  # the request body when valid; the line itself (cut short) when not
    error: GatewayError | None = None


Validate = Callable[[str, bytes], None]  # (kind, body) -> raises GatewayError when the live endpoint would


def read_input(source: Iterable[bytes], endpoint: str, validate: Validate, max_lines: int) -> Iterator[InputLine]:
    """Every non-blank line of the input file, checked as the live ``endpoint`` would check its body."""
    kind = KINDS[endpoint]
    seen: set[str] = set()
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        if number > max_lines:
            yield InputLine(number, None, raw[:1024], InvalidRequest(
                f"The file has more than {max_lines} lines, this gateway's limit per batch (jobs.max_batch_lines)."))
            continue
        custom_id = None
        try:
            item = orjson.loads(raw)
            if not isinstance(item, dict):
                raise InvalidRequest("The line is not a JSON object.")
            custom_id = item.get("custom_id")
            body = _check_line(item, endpoint, seen)
            encoded = orjson.dumps(body)
            validate(kind, encoded)
        except orjson.JSONDecodeError as exc:
            yield InputLine(number, None, raw[:1024], InvalidRequest(f"The line is not valid JSON: {exc}."))
            continue
        except GatewayError as error:
            yield InputLine(number, custom_id if isinstance(custom_id, str) else None, raw[:1024], error)
            continue
        assert isinstance(custom_id, str)
        seen.add(custom_id)
        yield InputLine(number, custom_id, encoded)


def _check_line(item: dict[str, Any], endpoint: str, seen: set[str]) -> dict[str, Any]:
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise InvalidRequest("Each line needs a 'custom_id' string.", param="custom_id")
    if custom_id in seen:
        raise InvalidRequest(f"The custom_id {custom_id!r} appears on an earlier line; each must be unique.",
                             param="custom_id")
    if item.get("method", "POST") != "POST":
        raise InvalidRequest("'method' must be POST.", param="method")
    if item.get("url") != endpoint:
        raise InvalidRequest(f"'url' is {item.get('url')!r}; this batch's endpoint is {endpoint} "
                             f"(supported: {', '.join(ENDPOINTS.values())}).", param="url")
    body = item.get("body")
    if not isinstance(body, dict):
        raise InvalidRequest("'body' must be a JSON object: the request for the endpoint.", param="body")
    if body.get("stream"):
        raise InvalidRequest("Batch requests cannot stream; leave out 'stream'.", param="body.stream")
    return body


def output_line(job: Job) -> bytes:
    """The output file's line for a line that succeeded, or the error file's for one that did not."""
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    if job.status in ("expired", "cancelled") and job.result is None:
        code = "batch_expired" if job.status == "expired" else "batch_cancelled"
        reason = ("the batch's completion window ended" if job.status == "expired" else "the batch was cancelled")
        error = {"code": code, "message": f"This request was not run: {reason} first."}
    elif job.request_id is None and job.status == "failed" and job.attempts == 0 and job.result is not None:
        problem = orjson.loads(job.result)["error"]
        if problem.get("code") == "insufficient_quota":  # stopped by the budget before it ran
            response = {"status_code": job.status_code, "request_id": None, "body": orjson.loads(job.result)}
        else:
            error = {"code": "invalid_request", "message": f"line {job.line}: {problem['message']}",
                     "param": problem.get("param"), "line": job.line}
    else:
        response = {"status_code": job.status_code, "request_id": job.request_id,
                    "body": orjson.loads(job.result) if job.result is not None else None}
    return orjson.dumps({"id": f"batch_req_{job.id}", "custom_id": job.custom_id, "response": response,
                         "error": error}) + b"\n"
