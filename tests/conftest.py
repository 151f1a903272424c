from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.fakes import FakeUpstream


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Gateways a test builds with default settings (in this process or as subprocesses) keep their
    # SQLite files, write-ahead logs and converted model copies here, not in the checkout.
    saved = os.environ.get("TOKENWAY_DATA_DIR")
    os.environ["TOKENWAY_DATA_DIR"] = str(tmp_path_factory.mktemp("tokenway-data"))
    yield
    if saved is None:
        os.environ.pop("TOKENWAY_DATA_DIR", None)
    else:
        os.environ["TOKENWAY_DATA_DIR"] = saved


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def pytest_collection_finish(session: pytest.Session) -> None:
    # An empty run must fail loudly, never pass as "no tests ran".
    if not session.items and not session.config.option.collectonly:
        raise pytest.UsageError("no tests were collected; the suite must never run empty")
