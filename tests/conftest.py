from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeUpstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    # An empty run must fail loudly, never pass as "no tests ran".
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected; the suite must never run empty")
