from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes import FakeUpstream


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()
