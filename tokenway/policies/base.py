"""What a policy is: ``async __call__(ctx, call, next) -> Answer``, like ASGI middleware."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol

from tokenway.context import RequestContext
from tokenway.providers.base import Answer, Call

Handler = Callable[[RequestContext, Call], Awaitable[Answer]]


class Policy(Protocol):
    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer: ...


def compose(policies: Sequence[Policy], last: Handler) -> Handler:
    """One handler that runs ``policies`` in order, then ``last``."""
    handler = last
    for policy in reversed(policies):
        handler = partial(policy, next=handler)
    return handler
