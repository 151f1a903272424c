"""The prompts policy: a chat request's prompt version rendered into its messages.

A request names one (``"prompt": {"id", "version"?, "variables"}``), or its key or its model pins
one (``prompt: name`` or ``name@3``; the request's own wins, then the key's, then the model's). The
version's system and user parts, variables filled in, go before the messages the client sent;
the ``prompt`` field itself never reaches the backend. It runs right after access (a key's pin
needs the key), before guards and the cache, so both see the messages the backend will see.
"""

from __future__ import annotations

from typing import Any

from tokenway.config import GatewayConfig
from tokenway.context import RequestContext
from tokenway.errors import InvalidRequest
from tokenway.observability.metrics import Metrics
from tokenway.policies.base import Handler
from tokenway.prompts.service import Prompts
from tokenway.prompts.templates import parse_pin
from tokenway.providers.base import Answer, Call


class ApplyPrompt:
    def __init__(self, prompts: Prompts, config: GatewayConfig, metrics: Metrics) -> None:
        self._prompts = prompts
        self._model_pins = {m.name: parse_pin(m.prompt) for m in config.models if m.prompt}
        self._requests = metrics.prompt_requests

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        if call.kind != "chat":  # a completions request's "prompt" is its text
            return await next(ctx, call)
        body = call.body
        asked: dict[str, Any] | None = body.get("prompt")
        if asked is not None:
            version = self._prompts.resolve(asked["id"], asked.get("version"))
            values = asked.get("variables") or {}
        else:
            key_pin = ctx.key.prompt if ctx.key is not None else None
            pin = parse_pin(key_pin) if key_pin else self._model_pins.get(body["model"])
            if pin is None:
                return await next(ctx, call)
            try:
                version, values = self._prompts.resolve(*pin), {}
            except InvalidRequest as error:  # the caller sent no prompt: say where this one comes from
                pinned_by = "your key" if key_pin else f"the model {body['model']!r}"
                raise InvalidRequest(f"{error.message} It is pinned by {pinned_by}; an admin can fix the pin.",
                                     code=error.code) from None
        messages = version.render(values)
        call.body = {k: v for k, v in body.items() if k != "prompt"}
        call.body["messages"] = [*messages, *body["messages"]]
        call.prompt_estimate = None  # the messages grew: whoever counts the prompt again counts these too
        ctx.prompt = (version.id, version.version)
        ctx.defer(self._count)
        return await next(ctx, call)

    def _count(self, ctx: RequestContext) -> None:
        assert ctx.prompt is not None
        self._requests.labels(ctx.prompt[0], str(ctx.prompt[1]), ctx.model or "", str(ctx.status)).inc()
