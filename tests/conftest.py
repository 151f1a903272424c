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


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--min-tests", type=int, default=1, metavar="N",
                     help="fail unless at least N tests are selected (make test passes the suite's floor)")


def pytest_collection_finish(session: pytest.Session) -> None:
    # An empty or shrunken run must fail loudly, never pass as "no tests ran": a broken import that
    # skips a whole directory, or a -k that matches nothing, is an error.
    if session.config.option.collectonly:
        return
    floor: int = session.config.getoption("--min-tests")
    if len(session.items) < floor:
        raise pytest.UsageError(
            f"{len(session.items)} tests selected, fewer than the floor of {floor}; "
            "check for collection errors above, or lower MIN_TESTS in the Makefile if tests were removed on purpose"
        )
