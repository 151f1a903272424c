"""``tokenway jobs``: submit batches and follow jobs on a running gateway, over its public HTTP API.

``submit FILE.jsonl`` uploads a file (``POST /v1/files``) and starts a batch (``POST /v1/batches``);
``list``, ``show``, ``cancel`` and ``results`` read the async and Batch APIs. It is a client like any
other: the gateway decides with the key it is given (``--api-key`` / ``TOKENWAY_API_KEY``) what it
may see. Errors are the gateway's own messages; the exit status is 1 for those, 2 for bad input here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

from tokenway.jobs.records import ENDPOINTS, KINDS

BATCH_ENDED = ("completed", "failed", "expired", "cancelled")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "expired")


class CommandError(Exception):
    """What went wrong, said once to the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        with _Client(args.base_url, args.api_key) as client:
            return int(args.run(client, args))
    except CommandError as exc:
        print(f"tokenway jobs: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("tokenway jobs: interrupted.", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--base-url", default=os.environ.get("TOKENWAY_BASE_URL", "http://127.0.0.1:8000"),
                        help="the gateway (env TOKENWAY_BASE_URL; default %(default)s)")
    common.add_argument("--api-key", default=os.environ.get("TOKENWAY_API_KEY"),
                        help="the key to call it with (env TOKENWAY_API_KEY)")
    common.add_argument("--json", action="store_true", help="print the API's JSON objects instead of tables")
    parser = argparse.ArgumentParser(
        prog="tokenway jobs", description="Submit batches and follow async jobs and batches on a running gateway.")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", parents=[common], help="run a JSONL file of requests as a batch")
    submit.add_argument("file", type=Path, help="one request per line: a Batch API line or just the request body")
    submit.add_argument("--model", help="for lines whose body names no model")
    submit.add_argument("--endpoint", choices=sorted(KINDS),
                        help="default: the lines' url, else /v1/completions for bodies with a 'prompt', "
                             "else /v1/chat/completions")
    submit.add_argument("--window", default="24h", help="completion window, e.g. 24h, 90m (default %(default)s)")
    submit.add_argument("--metadata", action="append", default=[], metavar="NAME=VALUE",
                        help="the batch's metadata (repeatable)")
    submit.add_argument("--wait", action="store_true", help="show progress until the batch ends")
    submit.add_argument("--output", type=Path, help="with --wait: write the results here (errors beside it)")
    submit.add_argument("--poll", type=float, default=1.0, help="seconds between progress checks")
    submit.set_defaults(run=_submit)

    listing = commands.add_parser("list", parents=[common], help="your jobs (or batches), newest first")
    listing.add_argument("--status", help=f"jobs: {', '.join(JOB_STATUSES)}; batches: their status")
    listing.add_argument("--batches", action="store_true", help="list batches instead of async jobs")
    listing.add_argument("--all", action="store_true", help="every tenant's, from /admin/jobs (the master key)")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--after", help="the last id of the previous page")
    listing.set_defaults(run=_list)

    show = commands.add_parser("show", parents=[common], help="a job (job_...) or a batch (batch_...)")
    show.add_argument("id")
    show.set_defaults(run=_show)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a job or a batch")
    cancel.add_argument("id")
    cancel.set_defaults(run=_cancel)

    results = commands.add_parser("results", parents=[common], help="download a batch's output and error files")
    results.add_argument("batch_id")
    results.add_argument("--output", type=Path, help="default: BATCH_ID.jsonl (errors: BATCH_ID.errors.jsonl)")
    results.set_defaults(run=_results)
    return parser


class _Client:
    """The gateway's HTTP API; an error answer becomes a ``CommandError`` with the envelope's message."""

    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers,
                                  timeout=httpx.Timeout(300.0, connect=10.0))

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._request(method, path, **kwargs) as response:
            return orjson.loads(response.read())

    def download(self, path: str, target: Path) -> int:
        """Stream a file's contents to ``target``; its line count."""
        lines = 0
        with self._request("GET", path) as response, target.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
                lines += chunk.count(b"\n")
        return lines

    @contextmanager
    def _request(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    raise CommandError(self._problem(response))
                yield response
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach the gateway at {self.base_url} ({exc}). Is it running? "
                               "Point at it with --base-url or TOKENWAY_BASE_URL.") from exc

    def _problem(self, response: httpx.Response) -> str:
        body = response.read()
        try:
            message = orjson.loads(body)["error"]["message"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            message = body.decode(errors="replace").strip()[:300] or response.reason_phrase
        if response.status_code == 401:
            message += " Pass the key with --api-key or TOKENWAY_API_KEY."
        return f"{message} (HTTP {response.status_code})"


# submit

def _submit(client: _Client, args: argparse.Namespace) -> int:
    if args.output is not None and not args.wait:
        raise CommandError("--output goes with --wait; without it, collect the results later with "
                           "`tokenway jobs results BATCH_ID --output FILE`.", code=2)
    data, endpoint, count = batch_file(args.file, args.model, args.endpoint)
    metadata = dict(_pair(item) for item in args.metadata) or None
    uploaded = client.call("POST", "/v1/files", data={"purpose": "batch"},
                           files={"file": (args.file.name, data, "application/jsonl")})
    batch = client.call("POST", "/v1/batches", json={"input_file_id": uploaded["id"], "endpoint": endpoint,
                                                     "completion_window": args.window, "metadata": metadata})
    if not args.wait:
        _print_batch_id(batch, args.json)
        print(f"{count} requests to {endpoint}. Follow: tokenway jobs show {batch['id']}; collect: "
              f"tokenway jobs results {batch['id']} --output results.jsonl", file=sys.stderr)
        return 0
    print(f"{batch['id']}: {count} requests to {endpoint}", file=sys.stderr)
    try:
        batch = _follow(client, batch, args.poll)
    except KeyboardInterrupt:
        print(f"\nStopped waiting; {batch['id']} keeps running on the gateway. Check it with "
              f"`tokenway jobs show {batch['id']}`, collect it with `tokenway jobs results {batch['id']}`, "
              f"stop it with `tokenway jobs cancel {batch['id']}`.", file=sys.stderr)
        return 130
    _print_batch_id(batch, args.json)
    if args.output is not None:
        _write_results(client, batch, args.output)
    elif batch["status"] != "failed":
        print(f"Collect the results with `tokenway jobs results {batch['id']} --output results.jsonl`.",
              file=sys.stderr)
    return 0 if batch["status"] == "completed" and not batch["request_counts"]["failed"] else 1


def batch_file(path: Path, model: str | None, endpoint: str | None) -> tuple[bytes, str, int]:
    """The file as Batch API lines, its endpoint and its number of requests.

    A line that is already a Batch API line (it has a ``body``) keeps its ``custom_id``; a bare request
    body becomes one with ``custom_id`` ``line-<n>``. Either gets ``model`` when its body has none. A
    line that is not a JSON object is sent as it is, so the gateway's error file reports it by number:
    lines stay where they were.
    """
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}.", code=2) from exc
    items: list[tuple[int, dict[str, Any] | None]] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            item = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            item = None
        items.append((number, item if isinstance(item, dict) else None))
    requests = [item for _, item in items if item is not None]
    if not any(raw.strip() for raw in raw_lines):
        raise CommandError(f"{path} has no requests: one JSON object a line is expected.", code=2)
    endpoint = endpoint or _endpoint(requests)
    out: list[bytes] = []
    for (number, item), raw in zip(items, raw_lines, strict=True):
        if item is None:
            out.append(raw)
            continue
        if "body" not in item:
            item = {"custom_id": f"line-{number}", "method": "POST", "url": endpoint, "body": item}
        body = item["body"]
        if isinstance(body, dict) and "model" not in body:
            if model is None:
                raise CommandError(f"{path}, line {number}: the request names no model; pass --model.", code=2)
            body["model"] = model
        item.setdefault("url", endpoint)
        out.append(orjson.dumps(item))
    return b"\n".join(out) + b"\n", endpoint, len(requests)


def _endpoint(requests: list[dict[str, Any]]) -> str:
    for item in requests:
        if isinstance(item.get("url"), str) and "body" in item:
            return str(item["url"])
        if "prompt" in item and "messages" not in item:
            return ENDPOINTS["completions"]
        if "messages" in item:
            return ENDPOINTS["chat"]
    return ENDPOINTS["chat"]


def _pair(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep:
        raise CommandError(f"--metadata {item!r}: expected NAME=VALUE.", code=2)
    return name, value


def _follow(client: _Client, batch: dict[str, Any], poll: float) -> dict[str, Any]:
    """Poll the batch until it ends, showing its lines done and failed."""
    progress = _Progress(batch["id"], sys.stderr)
    try:
        while True:
            progress.update(batch)
            if batch["status"] in BATCH_ENDED:
                break
            time.sleep(poll)
            batch = client.call("GET", f"/v1/batches/{batch['id']}")
    finally:
        progress.close()
    for error in (batch.get("errors") or {}).get("data", []):
        print(f"  {error.get('message')}", file=sys.stderr)
    return batch


class _Progress:
    """A bar of a batch's lines finished: rich or tqdm on a terminal, else a line when the counts change."""

    PLAIN_EVERY_S = 2.0

    def __init__(self, batch_id: str, out: TextIO) -> None:
        self._id, self._out = batch_id, out
        self._bar: Any = None
        self._kind = "plain"
        self._last: tuple[Any, ...] = ()
        self._last_at = 0.0
        if out.isatty():
            try:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

                self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), transient=False)
                self._bar.start()
                self._task = self._bar.add_task(batch_id, total=None)
                self._kind = "rich"
            except ImportError:
                try:
                    from tqdm import tqdm

                    self._bar = tqdm(desc=batch_id, unit="line", file=out)
                    self._kind = "tqdm"
                except ImportError:
                    pass

    def update(self, batch: dict[str, Any]) -> None:
        counts = batch["request_counts"]
        done, failed, total = counts["completed"], counts["failed"], counts["total"] or None
        text = f"{self._id} {batch['status']}: {done} done, {failed} failed"
        if self._kind == "rich":
            self._bar.update(self._task, total=total, completed=done + failed, description=text)
        elif self._kind == "tqdm":
            self._bar.total = total
            self._bar.n = done + failed
            self._bar.set_postfix_str(f"{batch['status']}, failed={failed}", refresh=True)
        else:
            state = (batch["status"], done, failed, total)
            now = time.monotonic()
            status_changed = not self._last or state[0] != self._last[0]
            if state != self._last and (status_changed or now - self._last_at >= self.PLAIN_EVERY_S):
                self._out.write(f"{text} of {total or '?'}\n")
                self._out.flush()
                self._last, self._last_at = state, now

    def close(self) -> None:
        if self._kind == "rich":
            self._bar.stop()
        elif self._kind == "tqdm":
            self._bar.close()


# list, show, cancel, results

def _list(client: _Client, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.after:
        params["after"] = args.after
    if args.status and not args.batches:  # the batch lists have no status filter: filtered here
        params["status"] = args.status
    if args.all:
        admin = client.call("GET", "/admin/jobs", params=params)
        if args.json:
            _print_json(admin)
            return 0
        counts = ", ".join(f"{n} {status}" for status, n in sorted(admin["counts"].items())) or "no jobs"
        print(f"jobs: {counts}", file=sys.stderr)
        if args.batches:
            _batch_table([b for b in admin["batches"] if args.status in (None, b["status"])], owner=True)
        else:
            _job_table(admin["jobs"]["data"], owner=True)
        return 0
    if args.batches:
        page = client.call("GET", "/v1/batches", params=params)
        page["data"] = [b for b in page["data"] if args.status in (None, b["status"])]
    else:
        page = client.call("GET", "/v1/async", params=params)
    if args.json:
        _print_json(page)
        return 0
    (_batch_table if args.batches else _job_table)(page["data"])
    if page["has_more"]:
        print(f"More: --after {page['last_id']}", file=sys.stderr)
    return 0


def _show(client: _Client, args: argparse.Namespace) -> int:
    item = client.call("GET", _path(args.id))
    if args.json:
        _print_json(item)
        return 0
    if item["object"] == "batch":
        counts = item["request_counts"]
        rows = {"id": item["id"], "status": item["status"], "endpoint": item["endpoint"],
                "lines": f"{counts['completed']} done, {counts['failed']} failed of {counts['total']}",
                "created": _when(item["created_at"]), "expires": _when(item["expires_at"]),
                "input_file_id": item["input_file_id"], "output_file_id": item["output_file_id"],
                "error_file_id": item["error_file_id"],
                "metadata": ", ".join(f"{k}={v}" for k, v in (item["metadata"] or {}).items()) or None}
        rows |= {name.removesuffix("_at"): _when(item[name]) for name in (
            "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelled_at")
            if item.get(name)}
        rows |= {f"error {i + 1}": e.get("message") for i, e in enumerate((item["errors"] or {}).get("data", []))}
    else:
        rows = {name: item.get(name) for name in ("id", "status", "endpoint", "model", "attempts", "status_code",
                                                  "batch_id", "custom_id", "line", "webhook_url", "webhook_state")}
        rows |= {"created": _when(item["created_at"]), "started": _when(item["started_at"]),
                 "finished": _when(item["finished_at"]), "queued_s": item["timings"]["queued_s"],
                 "run_s": item["timings"]["run_s"]}
        if item.get("error"):
            rows["error"] = item["error"].get("message")
        if item.get("result"):
            rows["answer"] = _answer(item["result"])
    _table(["field", "value"], [[name, value] for name, value in rows.items() if value is not None])
    return 0


def _cancel(client: _Client, args: argparse.Namespace) -> int:
    item = client.call("POST", _path(args.id) + "/cancel")
    if args.json:
        _print_json(item)
    else:
        print(f"{item['id']}: {item['status']}")
    return 0


def _results(client: _Client, args: argparse.Namespace) -> int:
    if not args.batch_id.startswith("batch_"):
        raise CommandError(f"{args.batch_id!r} is not a batch id (batch_...); a job's result is in "
                           f"`tokenway jobs show {args.batch_id}`.", code=2)
    batch = client.call("GET", _path(args.batch_id))
    if batch["status"] not in BATCH_ENDED:
        counts = batch["request_counts"]
        raise CommandError(f"{batch['id']} is {batch['status']} ({counts['completed'] + counts['failed']} of "
                           f"{counts['total']} lines finished); its results are written when it ends.")
    _write_results(client, batch, args.output or Path(f"{batch['id']}.jsonl"))
    return 0 if batch["status"] != "failed" else 1


def _write_results(client: _Client, batch: dict[str, Any], output: Path) -> None:
    """The output file at ``output`` (empty when no line succeeded), the error file beside it."""
    if batch["status"] == "failed":
        problems = "; ".join(e.get("message", "") for e in (batch.get("errors") or {}).get("data", []))
        raise CommandError(f"{batch['id']} failed and has no results: {problems or 'no reason given'}")
    written = 0
    if batch["output_file_id"]:
        written = client.download(f"/v1/files/{batch['output_file_id']}/content", output)
    else:
        output.write_bytes(b"")
    note = f"{_count(written, 'result')} in {output}"
    if batch["error_file_id"]:
        errors = output.with_name(f"{output.stem}.errors{output.suffix or '.jsonl'}")
        failed = client.download(f"/v1/files/{batch['error_file_id']}/content", errors)
        note += f", {_count(failed, 'error')} in {errors}"
    print(note, file=sys.stderr)


def _path(item_id: str) -> str:
    if item_id.startswith("batch_"):
        return f"/v1/batches/{item_id}"
    if item_id.startswith("job_"):
        return f"/v1/async/{item_id}"
    raise CommandError(f"{item_id!r} is neither a job id (job_...) nor a batch id (batch_...).", code=2)


# output

def _job_table(jobs: list[dict[str, Any]], owner: bool = False) -> None:
    columns = ["id", *(["owner"] if owner else []), "status", "endpoint", "model", "created", "attempts", "run_s"]
    _table(columns, [[job["id"], *([job["owner"]] if owner else []), job["status"], job["endpoint"], job["model"],
                      _when(job["created_at"]), job["attempts"], job["timings"]["run_s"]] for job in jobs])


def _batch_table(batches: list[dict[str, Any]], owner: bool = False) -> None:
    columns = ["id", *(["owner"] if owner else []), "status", "endpoint", "done", "failed", "total", "created"]
    rows = []
    for b in batches:
        counts = b["request_counts"]
        rows.append([b["id"], *([b["owner"]] if owner else []), b["status"], b["endpoint"], counts["completed"],
                     counts["failed"], counts["total"], _when(b["created_at"])])
    _table(columns, rows)


def _table(columns: list[str], rows: list[list[Any]]) -> None:
    """A rich table on a terminal; plain aligned columns otherwise, never cut short, for grep and scripts."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    if sys.stdout.isatty():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table()
            for column in columns:
                table.add_column(column, overflow="fold")  # ids are copied from here: never cut short
            for row in cells:
                table.add_row(*row)
            Console().print(table)
            return
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    for row in [columns, *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _answer(result: dict[str, Any]) -> str | None:
    choices = result.get("choices") or [{}]
    choice = choices[0]
    text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
    return None if text is None else str(text)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _when(timestamp: float | None) -> str | None:
    return None if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _print_batch_id(batch: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(batch)
    else:
        print(batch["id"])


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())
