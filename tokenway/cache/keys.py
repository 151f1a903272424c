"""Cache keys: a hash of everything that can change the answer, inside the caller's scope.

The key covers the whole request body except the fields that only change how the answer is
delivered (``stream``, ``stream_options``) or who asked (``user``, ``metadata``). Unknown vendor
fields (vLLM's ``top_k``, ``repetition_penalty``...) stay in the key: a field we don't know may
change the output, and a wrong hit is worse than a miss. The tenant scope is part of every
key, so two tenants never share an entry.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from tokenway.context import RequestContext

# Fields that never change the generated text.
DELIVERY_FIELDS = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
# Numeric sampling fields: 0 and 0.0 must hash the same.
_FLOAT_FIELDS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "min_p")


def tenant_scope(ctx: RequestContext) -> str:
    """Who the cache belongs to: the key's alias, else a hash of the presented key, else ``anon``."""
    if ctx.key_alias:
        return "alias:" + ctx.key_alias
    if ctx.api_key:
        return "key:" + hashlib.sha256(ctx.api_key.encode()).hexdigest()[:32]
    return "anon"


def is_deterministic(body: dict[str, Any]) -> bool:
    """Greedy decoding (temperature 0) or a fixed seed: the same request gives the same answer."""
    temperature = body.get("temperature")
    if temperature is not None and float(temperature) == 0.0:
        return True
    return body.get("seed") is not None


def _normalised(body: dict[str, Any], drop: frozenset[str]) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in drop and v is not None}
    for name in _FLOAT_FIELDS:
        value = out.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)).hexdigest()


def exact_key(kind: str, body: dict[str, Any], scope: str) -> str:
    """The exact-cache key of one call (``kind`` is chat or completions)."""
    return _digest({"v": 1, "kind": kind, "scope": scope, "body": _normalised(body, DELIVERY_FIELDS)})


def last_user_text(body: dict[str, Any]) -> str | None:
    """The text of the final user message, or None when the call does not end with one."""
    messages = body.get("messages")
    if not messages:
        return None
    last = messages[-1]
    if last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Only text parts can be compared; an image or audio part makes the call exact-only.
        if any(not isinstance(p, dict) or p.get("type") != "text" for p in content):
            return None
        return "\n".join(str(p.get("text") or "") for p in content)
    return None


def semantic_scope(kind: str, body: dict[str, Any], scope: str) -> str | None:
    """The scope semantic neighbours must share: everything but the final user question.

    Tenant, model, system prompt, earlier turns, tools and every sampling parameter must match
    exactly; only the wording of the last question may differ. A paraphrase in an earlier turn
    changes the context of the answer in ways a similarity score cannot check, so it is a miss.
    """
    if kind != "chat" or last_user_text(body) is None:
        return None
    rest = _normalised(body, DELIVERY_FIELDS)
    rest["messages"] = [*body["messages"][:-1], {"role": "user", "name": body["messages"][-1].get("name")}]
    return _digest({"v": 1, "kind": "semantic", "scope": scope, "body": rest})[:40]
