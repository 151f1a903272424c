"""What the property tests share: derandomized Hypothesis settings and cutting a byte stream into pieces."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import settings
from hypothesis import strategies as st

# The same examples on every run (CI is not flaky) and no example database: a failure is printed as
# its smallest example, which is what a CI log needs.
PROPERTY = settings(derandomize=True, max_examples=150, deadline=None, database=None)


@st.composite
def cuts(draw: st.DrawFn, data: bytes, most: int = 10) -> list[bytes]:
    """``data`` cut into pieces at up to ``most`` places anywhere (empty pieces included)."""
    places = sorted(draw(st.lists(st.integers(0, len(data)), max_size=most)))
    return [data[a:b] for a, b in pairwise([0, *places, len(data)])]
