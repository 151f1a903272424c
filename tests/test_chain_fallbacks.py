"""Fallback chains, context-window fallbacks, the key's allow-list and the degraded reply, in process."""

from __future__ import annotations

from tests.inprocess import TEXT, context_overflow, fail, gateway, http_error, sse_data
from tokenway.context import RequestContext
from tokenway.policies.base import Handler
from tokenway.providers.base import Answer, Call
from tokenway.stores.base import KeyRecord


def models(**fields: str) -> str:
    """One model per keyword, each served by one fake deployment of the same name; the value adds YAML fields."""
    out = ["models:"]
    for name, extra in fields.items():
        out += [f"  - name: {name}", "    deployments:", f"      - {{provider: fake, name: {name}}}"]
        out += [f"    {line}" for line in extra.splitlines() if line.strip()]
    return "\n".join(out) + "\n"


class AsKey:
    """A policy that makes every call as a virtual key allowed only ``models`` (no key table needed)."""

    def __init__(self, *models: str) -> None:
        self.key = KeyRecord.model_validate({"id": "key_test", "hash": "0" * 64, "models": list(models)})

    async def __call__(self, ctx: RequestContext, call: Call, next: Handler) -> Answer:
        ctx.key = self.key
        return await next(ctx, call)


async def test_the_fallback_model_answers_when_every_attempt_at_the_first_failed() -> None:
    async with gateway(models(m="fallbacks: [backup]", backup="")) as gw:
        gw.fake("m").script(then=fail(http_error(500)))
        r = await gw.chat()
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == TEXT
        assert len(gw.fake("m").calls) == 3 and len(gw.fake("backup").calls) == 1
        assert gw.fake("backup").calls[0]["model"] == "m"  # the body is the client's; the fallback serves it
        assert gw.decisions()["fallback.model"] == 1


async def test_fallbacks_are_tried_in_order_and_a_fallback_brings_its_own() -> None:
    yaml = models(m="fallbacks: [first, second]", first="fallbacks: [third]", second="", third="")
    async with gateway(yaml) as gw:
        for name in ("m", "first", "second"):
            gw.fake(name).script(then=fail(http_error(503)))
        assert (await gw.chat()).status_code == 200
        assert [len(gw.fake(n).calls) for n in ("m", "first", "second", "third")] == [3, 3, 3, 1]


async def test_a_too_long_prompt_goes_to_the_context_fallback_without_retries() -> None:
    async with gateway(models(m="context_fallbacks: [long]\nfallbacks: [other]", long="", other="")) as gw:
        gw.fake("m").script(fail(context_overflow()))
        assert (await gw.chat()).status_code == 200
        assert len(gw.fake("m").calls) == 1 and len(gw.fake("long").calls) == 1 and gw.fake("other").calls == []
        assert gw.decisions()["fallback.context"] == 1
    async with gateway(models(m="", long="")) as gw:  # no context fallback: the backend's 400 is relayed
        gw.fake("m").script(fail(context_overflow()))
        r = await gw.chat()
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        assert len(gw.fake("m").calls) == 1


async def test_a_fallback_outside_the_keys_allow_list_is_skipped() -> None:
    yaml = models(m="fallbacks: [secret, public]", secret="", public="")
    async with gateway(yaml, extra=[AsKey("m", "public")]) as gw:
        gw.fake("m").script(then=fail(http_error(500)))
        assert (await gw.chat()).status_code == 200
        assert gw.fake("secret").calls == [] and len(gw.fake("public").calls) == 1
        assert gw.decisions()["fallback.model"] == 1  # only the one it may use was added
    async with gateway(models(m="fallbacks: [secret]", secret=""), extra=[AsKey("m")]) as gw:
        gw.fake("m").script(then=fail(http_error(500)))
        r = await gw.chat()
        assert r.status_code == 502 and gw.fake("secret").calls == []


async def test_the_master_key_has_no_allow_list_to_hold_it_back() -> None:
    async with gateway(models(m="fallbacks: [secret]", secret=""), master_key="sk-master") as gw:
        gw.fake("m").script(then=fail(http_error(500)))
        assert (await gw.chat()).status_code == 401
        r = await gw.chat(headers={"authorization": "Bearer sk-master"})
        assert r.status_code == 200 and len(gw.fake("secret").calls) == 1


async def test_the_degraded_reply_is_served_and_marked_when_nothing_can_answer() -> None:
    yaml = models(m='degradation: {reply: "The assistant is busy; please try again."}')
    async with gateway(yaml) as gw:
        gw.fake("m").script(then=fail(http_error(500)))
        r = await gw.chat()
        assert r.status_code == 200 and r.headers["x-tokenway-degraded"] == "true"
        assert r.json()["system_fingerprint"] == "tokenway-degraded"
        assert r.json()["choices"][0]["message"]["content"] == "The assistant is busy; please try again."
        streamed = await gw.chat(stream=True)
        chunk, done = sse_data(streamed)
        assert streamed.headers["x-tokenway-degraded"] == "true" and done == "[DONE]"
        assert chunk["system_fingerprint"] == "tokenway-degraded"
        assert chunk["choices"][0]["delta"]["content"].startswith("The assistant is busy")
        assert gw.decisions()["degraded.reply"] == 2
