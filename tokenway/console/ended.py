"""Console sessions ended by logging out, so a copied cookie stops working everywhere.

The cookie stays stateless (``console/session.py``); what is stored is only the ids of sessions
logged out before their expiry, each kept until the cookie would have expired anyway. In memory on
one process; in Redis when the gateway has one (a sorted set scored by expiry), read by each process
at most once every ``REFRESH_S`` and kept as a set, so checking a session costs no round trip, and a
logout reaches every replica within that second. The process that logged out knows at once.

``without_ended_sessions`` sits in front of the control plane and the playground: a request whose
session was ended goes on without its cookies, as if it never had them (the admin API answers 401,
the pages send the browser to the login).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from redis.exceptions import RedisError
from starlette.requests import cookie_parser

from tokenway.api.openai import Endpoint
from tokenway.asgi import Receive, Scope, Send, send_error
from tokenway.console.session import SESSION_COOKIE, SESSION_S, session_id
from tokenway.errors import GatewayError

REFRESH_S = 1.0


class SessionsUnavailable(GatewayError):
    status = 503
    code = "sessions_unavailable"


@contextmanager
def redis_down_is_503(doing: str) -> Iterator[None]:
    """A session is never taken on trust: with Redis gone, the console answers 503, not an open door."""
    try:
        yield
    except (OSError, RedisError) as exc:
        raise SessionsUnavailable(f"The console cannot {doing}: Redis is unreachable. Calls with the master "
                                  "key (and no session cookie) still work.") from exc


class EndedSessions(Protocol):
    async def end(self, session: str, expires: int) -> None: ...

    async def ended(self, session: str) -> bool: ...


def open_ended_sessions(redis: Any, prefix: str) -> EndedSessions:
    """In Redis under ``<prefix>console:ended`` when the gateway has one (``redis``), else in memory."""
    return RedisEndedSessions(redis, f"{prefix}console:ended") if redis is not None else MemoryEndedSessions()


class MemoryEndedSessions:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._expires: dict[str, int] = {}

    async def end(self, session: str, expires: int) -> None:
        now = self._clock()
        self._expires = {s: e for s, e in self._expires.items() if e > now}  # cookies that expired by themselves
        self._expires[session] = expires

    async def ended(self, session: str) -> bool:
        return session in self._expires


class RedisEndedSessions:
    def __init__(self, redis: Any, key: str, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self._key = key
        self._clock = clock
        self._known: set[str] = set()
        self._read_at = float("-inf")

    async def end(self, session: str, expires: int) -> None:
        now = self._clock()
        with redis_down_is_503("end the session"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zadd(self._key, {session: expires})
                pipe.zremrangebyscore(self._key, "-inf", now)
                pipe.expire(self._key, SESSION_S)  # no session outlives this; the set goes when logouts stop
                await pipe.execute()
        self._known.add(session)

    async def ended(self, session: str) -> bool:
        now = self._clock()
        if now - self._read_at >= REFRESH_S:
            self._read_at = now  # the calls meanwhile use the set as it is, rather than all asking Redis
            try:
                with redis_down_is_503("check its sessions"):
                    members = await self._redis.zrangebyscore(self._key, now, "+inf")
            except BaseException:
                self._read_at = float("-inf")  # not a second on an old list: the next call asks again
                raise
            self._known = {m.decode() if isinstance(m, bytes) else m for m in members}
        return session in self._known


def without_ended_sessions(endpoint: Endpoint, ended: EndedSessions) -> Endpoint:
    """``endpoint``, for which a request carrying an ended session carries no cookies."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        cookie = b"; ".join(value for name, value in scope["headers"] if name == b"cookie")
        token = cookie_parser(cookie.decode("latin-1")).get(SESSION_COOKIE) if cookie else None
        if token:
            try:
                gone = await ended.ended(session_id(token))
            except SessionsUnavailable as error:
                await send_error(send, error, [])
                return
            if gone:
                scope = {**scope, "headers": [(n, v) for n, v in scope["headers"] if n != b"cookie"]}
        await endpoint(scope, receive, send)

    return serve
