"""The embedded model on llama.cpp, through ``LocalProvider``, with the real bundled SmolLM2 GGUF."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio

from tokenway.config import DeploymentConfig
from tokenway.context import RequestContext
from tokenway.errors import InvalidRequest, Overloaded
from tokenway.protocol import SSE_DONE, iter_sse_data
from tokenway.providers.base import Call, Completion, Stream
from tokenway.providers.local.model_files import ModelFileMissing
from tokenway.providers.local.provider import LocalProvider
from tokenway.providers.local.stop_strings import StopMatcher

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = [{"role": "user", "content": "Write a short poem about the sea."}]


# The engine's converted copy of the bundled model, kept outside the repository and reused across runs
# (it is named by the source file's hash).
CONVERTED_MODELS = Path(tempfile.gettempdir()) / "tokenway-test-models"


def make_provider(**options: Any) -> LocalProvider:
    options.setdefault("requantize_dir", str(CONVERTED_MODELS))
    deployment = DeploymentConfig.model_validate({"provider": "local", "model": "local", **options})
    return LocalProvider(deployment, deployment.options, resources=None)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def provider() -> AsyncIterator[LocalProvider]:
    local = make_provider(slots=8, context_window=512)
    await local.start()
    yield local
    await local.aclose()


def ctx() -> RequestContext:
    return RequestContext(request_id="test", endpoint="/v1/chat/completions")


def chat(**body: Any) -> Call:
    return Call("chat", {"model": "local", "messages": QUESTION, **body})


async def answer(provider: LocalProvider, call: Call) -> dict[str, Any]:
    result = await (provider.chat(call, ctx()) if call.kind == "chat" else provider.completions(call, ctx()))
    assert isinstance(result, Completion)
    return orjson.loads(result.body)


async def read_stream(stream: Stream) -> tuple[list[dict[str, Any]], bytes]:
    blocks = [block async for block in stream]
    await stream.aclose()
    raw = b"".join(blocks)
    return [orjson.loads(data) for data in iter_sse_data(raw) if data != b"[DONE]"], raw


async def wait_idle(provider: LocalProvider) -> None:
    for _ in range(200):
        if provider.engine.load().running == 0:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"slots still busy: {provider.engine.load()}")  # type: ignore[attr-defined]


async def test_greedy_and_seeded_output_is_deterministic(provider: LocalProvider) -> None:
    greedy = [await answer(provider, chat(temperature=0, max_tokens=24)) for _ in range(2)]
    assert greedy[0]["choices"][0]["message"]["content"] == greedy[1]["choices"][0]["message"]["content"]
    assert greedy[0]["choices"][0]["message"]["content"].strip()
    seeded = [await answer(provider, chat(temperature=0.9, seed=7, max_tokens=24)) for _ in range(2)]
    assert seeded[0]["choices"][0]["message"]["content"] == seeded[1]["choices"][0]["message"]["content"]


async def test_stream_and_non_stream_give_the_same_text_and_usage(provider: LocalProvider) -> None:
    whole = await answer(provider, chat(temperature=0, max_tokens=20))
    stream = await provider.chat(chat(temperature=0, max_tokens=20, stream=True,
                                      stream_options={"include_usage": True}), ctx())
    assert isinstance(stream, Stream)
    chunks, raw = await read_stream(stream)
    assert raw.endswith(SSE_DONE)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == [whole["choices"][0]["finish_reason"]] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert stream.usage is not None and stream.usage.as_dict() == whole["usage"]


async def test_usage_counts_match_the_tokenizer(provider: LocalProvider) -> None:
    body = await answer(provider, chat(temperature=0, max_tokens=9))
    prompt_tokens = len(provider.engine.chat_prompt(QUESTION))
    assert body["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 9, "total_tokens": prompt_tokens + 9}
    text = await answer(provider, Call("completions", {"model": "local", "prompt": "The capital of France is",
                                                        "max_tokens": 5, "temperature": 0}))
    assert text["usage"]["prompt_tokens"] == len(provider.engine.text_prompt("The capital of France is"))
    assert text["usage"]["completion_tokens"] == 5 and text["choices"][0]["finish_reason"] == "length"


async def test_eight_concurrent_requests_finish_and_beat_serial(provider: LocalProvider) -> None:
    call = chat(temperature=0, max_tokens=32)
    started = time.perf_counter()
    serial = [await answer(provider, call) for _ in range(8)]
    serial_s = time.perf_counter() - started
    started = time.perf_counter()
    batched = await asyncio.gather(*(answer(provider, call) for _ in range(8)))
    batched_s = time.perf_counter() - started
    expected = serial[0]["choices"][0]["message"]["content"]
    for body in batched:
        assert body["choices"][0]["message"]["content"] == expected  # sequences never mix
        assert body["usage"]["completion_tokens"] == 32
    assert batched_s < serial_s
    await wait_idle(provider)


async def test_closing_a_stream_frees_its_slot(provider: LocalProvider) -> None:
    stream = await provider.chat(chat(max_tokens=400, stream=True, ignore_eos=True), ctx())
    assert isinstance(stream, Stream)
    await anext(stream)
    await anext(stream)
    assert provider.engine.load().running == 1  # type: ignore[attr-defined]
    await stream.aclose()
    await wait_idle(provider)
    assert stream.usage is not None and 0 < stream.usage.completion_tokens < 400
    load = provider.engine.load()  # type: ignore[attr-defined]
    assert load.kv_used == 0 and load.waiting == 0
    assert (await answer(provider, chat(max_tokens=3)))["usage"]["completion_tokens"] == 3


async def test_stop_strings_end_the_text_across_tokens(provider: LocalProvider) -> None:
    full = (await answer(provider, chat(temperature=0, max_tokens=30)))["choices"][0]["message"]["content"]
    stop = full[10:14]  # mid-text, usually across a token boundary
    body = await answer(provider, chat(temperature=0, max_tokens=30, stop=[stop, "zzzz-never"]))
    assert body["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_n_choices_and_text_completion_stream(provider: LocalProvider) -> None:
    body = await answer(provider, chat(n=2, seed=3, max_tokens=8))
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 16
    stream = await provider.completions(Call("completions", {"model": "local", "prompt": "Once upon a time",
                                                             "max_tokens": 6, "stream": True}), ctx())
    assert isinstance(stream, Stream)
    chunks, raw = await read_stream(stream)
    assert raw.endswith(SSE_DONE) and all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_a_bias_on_a_token_the_model_lacks_and_a_negative_seed_are_harmless(provider: LocalProvider) -> None:
    body = await answer(provider, chat(max_tokens=3, seed=-1, logit_bias={"50256": -100}))
    assert body["usage"]["completion_tokens"] == 3
    assert (await answer(provider, chat(max_tokens=2)))["usage"]["completion_tokens"] == 2  # the engine still works


async def test_unsupported_parameters_are_named_in_a_header(provider: LocalProvider) -> None:
    context = ctx()
    await provider.chat(chat(max_tokens=2, presence_penalty=0.5, logprobs=True, top_k=5), context)
    assert (b"x-tokenway-ignored-params", b"presence_penalty, logprobs") in context.response_headers


async def test_prompt_over_the_context_window_is_a_400(provider: LocalProvider) -> None:
    long = [{"role": "user", "content": "sea " * 600}]
    with pytest.raises(InvalidRequest) as info:
        await provider.chat(Call("chat", {"model": "local", "messages": long}), ctx())
    assert info.value.code == "context_length_exceeded" and "512" in info.value.message
    with pytest.raises(InvalidRequest, match="100 for the completion"):
        await provider.chat(chat(max_tokens=100, messages=[{"role": "user", "content": "sea " * 420}]), ctx())


async def test_full_queue_and_queue_deadline_are_503() -> None:
    small = make_provider(slots=1, queue_size=1, queue_timeout_s=0.3, warmup=False)
    await small.start()
    try:
        holder = await small.chat(chat(max_tokens=400, stream=True, ignore_eos=True), ctx())
        waiter = asyncio.create_task(answer(small, chat(max_tokens=2)))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as info:  # the slot and the one queue place are taken
            await small.chat(chat(max_tokens=2), ctx())
        assert info.value.retry_after is not None and info.value.status == 503
        with pytest.raises(Overloaded, match="in time"):  # the queued one waited past its deadline
            await waiter
        assert isinstance(holder, Stream)
        await holder.aclose()
        assert (await answer(small, chat(max_tokens=2)))["usage"]["completion_tokens"] == 2
    finally:
        await small.aclose()


async def test_missing_model_file_says_what_to_do() -> None:
    with pytest.raises(ModelFileMissing, match="gguf"):
        await make_provider(model_path="/nonexistent/model.gguf").start()


async def test_stop_matcher_holds_back_only_possible_prefixes() -> None:
    matcher = StopMatcher(["\n\nUser:"])
    assert matcher.feed("Hello\n") == ("Hello", False)
    assert matcher.feed("\nUs") == ("", False)
    assert matcher.feed("ually") == ("\n\nUsually", False)
    assert matcher.feed(" yes\n\nUser: hi") == (" yes", True)
    assert StopMatcher([]).feed("abc") == ("abc", False)
    tail = StopMatcher(["END"])
    assert tail.feed("the EN") == ("the ", False) and tail.flush() == "EN"
