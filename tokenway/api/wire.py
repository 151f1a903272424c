"""A front door's wire format: how its requests become the gateway's ``Call`` and its answers go back.

Every endpoint of the data plane runs the same steps (read the body, identify the caller, run the
policy list, send the answer, log) and differs only in its wire format. OpenAI's chat and text
completions are the gateway's own internal form, so their ``WireFormat`` translates nothing: the
policy list's answer goes to the client as it is. Another API (OpenAI's Responses, Anthropic's
Messages) translates its request into a chat ``Call`` on the way in and the chat answer back on
the way out, as pure functions over bodies and SSE blocks.

Streams are translated block by block *after* the stream writer has read each internal block
(to count the tokens delivered, to see ``[DONE]``): billing and timeouts work on the internal
OpenAI chunks whatever the client reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tokenway.config import Limits
from tokenway.context import RequestContext
from tokenway.errors import GatewayError
from tokenway.providers.base import Call


class StreamTranslation(Protocol):
    """One stream's translation out; built per stream, so it may keep state (open blocks, item ids)."""

    def feed(self, block: bytes) -> bytes:
        """This API's events for one block of canonical OpenAI SSE (``b""`` when none yet). The block
        that ends the internal stream (``data: [DONE]``) must produce this API's closing events."""

    def error(self, error: GatewayError) -> bytes:
        """The events that end the stream with ``error`` after it has started."""


class WireFormat(Protocol):
    """What one front door reads and writes."""

    @property
    def endpoint(self) -> str:
        """The front door's name in metrics and logs (``chat``, ``responses``, ...)."""

    def read(self, body: bytes, limits: Limits) -> Call:
        """The request, validated (``InvalidRequest`` naming the field in this API's terms) and turned
        into a ``Call`` the policy list knows (``chat``, ``completions``, ...)."""

    def completion(self, body: bytes, call: Call, ctx: RequestContext) -> bytes:
        """A finished answer's body: the internal (OpenAI) body in, this API's body out."""

    def stream(self, call: Call, ctx: RequestContext) -> StreamTranslation | None:
        """How a stream's blocks are translated; None: sent as they are (OpenAI's own formats)."""

    def error(self, error: GatewayError) -> tuple[int, bytes]:
        """The status and body of an error answer, in this API's envelope."""


class StatefulWire(WireFormat, Protocol):
    """A front door whose calls continue state the gateway keeps (Responses' ``previous_response_id``).

    ``read`` stays a pure, synchronous parse; ``prepare`` then completes the call from that state (a
    store read, async) once the caller is known, before the policy list runs, so the policies see the
    whole call (its prompt estimate, its model) and need to know nothing of the front door."""

    async def prepare(self, call: Call, ctx: RequestContext) -> None:
        """Complete ``call`` from the gateway's state for the caller in ``ctx``; raise ``GatewayError``
        (a 404 naming the field, in this API's terms) when the state it names is not there."""


@dataclass(frozen=True, slots=True)
class OpenAIWire:
    """OpenAI's chat and text completions: the internal form, nothing to translate."""

    endpoint: str
    read_call: Callable[[bytes, Limits], Call]

    def read(self, body: bytes, limits: Limits) -> Call:
        return self.read_call(body, limits)

    def completion(self, body: bytes, call: Call, ctx: RequestContext) -> bytes:
        return body

    def stream(self, call: Call, ctx: RequestContext) -> StreamTranslation | None:
        return None

    def error(self, error: GatewayError) -> tuple[int, bytes]:
        return error.status, error.envelope()
