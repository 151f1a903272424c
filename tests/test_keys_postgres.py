"""Keys in Postgres shared by two gateway processes: a revocation is seen by both within ~1 s."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.access_support import (
    MASTER,
    REDIS,
    chat,
    config,
    create_key,
    drop_schema,
    gateway_process,
    pg_schema,
    pg_url,
)
from tests.fakes import FakeUpstream


@pytest.fixture
def database_url() -> Iterator[str]:
    schema = pg_schema()
    yield pg_url(schema)
    drop_schema(schema)


def _until(condition: object, timeout: float) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        assert time.monotonic() - started < timeout, "condition not met in time"
        time.sleep(0.02)
    return time.monotonic() - started


def test_revocation_reaches_every_process_within_a_second(
    upstream: FakeUpstream, tmp_path: Path, database_url: str
) -> None:
    path = tmp_path / "tokenway.yaml"
    path.write_text(config(upstream, "keys_refresh_s: 0.5"))
    env = {"TOKENWAY_DATABASE_URL": database_url, "TOKENWAY_REDIS_URL": REDIS}
    with gateway_process(path, tmp_path / "a", **env) as a, gateway_process(path, tmp_path / "b", **env) as b:
        key = create_key(a, name="shared")
        seen = _until(lambda: chat(b, key["key"]).status_code == 200, 2.0)
        assert seen < 1.0
        assert chat(a, key["key"]).status_code == 200
        r = httpx.delete(f"{a}/admin/keys/{key['id']}", headers={"Authorization": f"Bearer {MASTER}"})
        assert r.status_code == 200
        assert chat(a, key["key"]).status_code == 401  # the writing process: at once
        gone = _until(lambda: chat(b, key["key"]).status_code == 401, 2.0)
        served_before = len(upstream.seen)
        assert chat(b, key["key"]).status_code == 401
    assert gone < 1.0
    assert len(upstream.seen) == served_before  # a revoked key never reaches the backend
