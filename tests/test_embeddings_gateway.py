"""``/v1/embeddings`` end to end: the official ``openai`` SDK over a real socket against the bundled
MiniLM (``local-embed``), an OpenAI-compatible fake backend and a fake Ollama, with keys, budgets,
the ledger, the exact cache, guards, retries, fallbacks and metrics (docs/embeddings.md)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest

from tests.access_support import MASTER, create_key, gateway
from tests.fakes import FakeUpstream, fake_vector
from tokenway.app import Gateway
from tokenway.providers.local_embed import LocalEmbedProvider

ADMIN = {"Authorization": f"Bearer {MASTER}"}
# "this is a test" in MiniLM's (BERT's uncased) vocabulary, without [CLS] and [SEP].
THIS_IS_A_TEST = [2023, 2003, 1037, 3231]


def _config(upstream: FakeUpstream) -> str:
    ollama = upstream.url("ok").removesuffix("/v1")
    return f"""
guards:
  profiles:
    strict:
      input:
        - {{check: pii, action: mask}}
        - {{check: blocked_terms, terms: [project falcon], action: block}}
models:
  - name: local-embed
    deployments:
      - provider: local-embed
        price: {{input_per_1m: 0.5}}
        max_wait_ms: 5
  - name: emb
    deployments:
      - provider: openai
        api_base: {upstream.url("ok")}
        model: text-embedding-3-small
        price: {{input_per_1m: 1.0, output_per_1m: 2.0}}
  - name: emb-ollama
    deployments:
      - provider: ollama
        api_base: {ollama}
        model: nomic-embed-text
  - name: emb-guarded
    guards: [strict]
    deployments:
      - provider: openai
        api_base: {upstream.url("guarded")}
  - name: emb-flaky
    deployments:
      - provider: openai
        api_base: {upstream.url("flaky")}
  - name: emb-down
    fallbacks: [emb]
    deployments:
      - provider: openai
        api_base: {upstream.url("status500")}
access:
  ledger_flush_s: 0.2
"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def served(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Gateway]]:
    with gateway(_config(upstream), tmp_path_factory.mktemp("embeddings")) as running:
        yield running


@pytest.fixture(scope="module")
def client(served: tuple[str, Gateway]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=MASTER, max_retries=0)


def _unit(vector: list[float]) -> np.ndarray:
    return np.asarray(vector, dtype=np.float32)


def test_local_float_and_base64_hold_the_same_vectors_and_similar_sentences_are_closer(
    client: openai.OpenAI,
) -> None:
    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Interest rates rose again this quarter."]
    floats = client.embeddings.create(model="local-embed", input=texts, encoding_format="float")
    decoded = client.embeddings.create(model="local-embed", input=texts)  # the SDK asks base64 and decodes it
    raw = client.embeddings.create(model="local-embed", input=texts, encoding_format="base64")
    vectors = np.array([_unit(d.embedding) for d in floats.data])
    assert floats.object == "list" and floats.model == "local-embed" and [d.index for d in floats.data] == [0, 1, 2]
    assert vectors.shape == (3, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(np.array([_unit(d.embedding) for d in decoded.data]), vectors)
    from_base64 = np.array([np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in raw.data])
    assert np.array_equal(from_base64, vectors)
    cat, kitten, rates = vectors
    assert float(cat @ kitten) > float(cat @ rates) + 0.3
    assert floats.usage.prompt_tokens > len(texts) and floats.usage.total_tokens == floats.usage.prompt_tokens


def test_local_dimensions_shorten_and_token_arrays_embed_as_their_text(client: openai.OpenAI) -> None:
    full = _unit(client.embeddings.create(model="local-embed", input="this is a test",
                                          encoding_format="float").data[0].embedding)
    short = _unit(client.embeddings.create(model="local-embed", input="this is a test", dimensions=64,
                                           encoding_format="float").data[0].embedding)
    assert short.shape == (64,) and np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)
    tokens = client.embeddings.create(model="local-embed", input=[THIS_IS_A_TEST, THIS_IS_A_TEST[:2]],
                                      encoding_format="float")
    assert np.allclose(_unit(tokens.data[0].embedding), full, atol=1e-5)
    assert tokens.usage.prompt_tokens == 6  # the arrays' own lengths
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="local-embed", input=[[5, 30522]])
    assert caught.value.body["param"] == "input[0]"  # type: ignore[index]


def test_local_refuses_too_many_dimensions_and_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="local-embed", input="x", dimensions=1000)
    assert caught.value.body["param"] == "dimensions" and "384" in caught.value.message  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="local-embed", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["param"] == "model" and "does not serve chat" in refused.value.message  # type: ignore[index]


def test_concurrent_local_requests_are_batched_and_each_gets_its_own_vectors(
    served: tuple[str, Gateway], client: openai.OpenAI,
) -> None:
    base, app = served
    provider = app.models.lookup("local-embed")[0].provider
    assert isinstance(provider, LocalEmbedProvider) and provider.batcher is not None
    texts = [f"Sentence number {i} is about {word}." for i, word in enumerate(["cats", "rain", "tax", "jazz"] * 8)]
    alone = [_unit(client.embeddings.create(model="local-embed", input=t, encoding_format="float").data[0].embedding)
             for t in texts[:4]]
    calls_before = provider.batcher.stats.calls

    def one(text: str) -> np.ndarray:
        r = httpx.post(base + "/v1/embeddings", headers=ADMIN, timeout=30,
                       json={"model": "local-embed", "input": text, "encoding_format": "float"})
        assert r.status_code == 200, r.text
        return _unit(r.json()["data"][0]["embedding"])

    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(one, texts))
    calls = provider.batcher.stats.calls - calls_before
    assert calls < len(texts)  # requests shared model calls
    assert max(provider.batcher.stats.sizes) > 1
    for i in range(4):  # padding in a batch does not change a vector
        assert np.allclose(together[i], alone[i], atol=1e-5)


def test_openai_compatible_backend_gets_the_request_relayed(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="emb", input=["alpha beta", "gamma"], dimensions=4,
                                      encoding_format="float", user="u-42")
    seen = upstream.seen[-1]
    assert seen.path == "/ok/v1/embeddings"
    assert seen.body == {"model": "text-embedding-3-small", "input": ["alpha beta", "gamma"], "dimensions": 4,
                         "encoding_format": "float", "user": "u-42"}
    assert [d.embedding for d in floats.data] == [fake_vector("alpha beta", 4), fake_vector("gamma", 4)]
    decoded = client.embeddings.create(model="emb", input="alpha beta")  # base64 from the backend, decoded
    assert np.allclose(decoded.data[0].embedding, fake_vector("alpha beta"), atol=1e-7)
    assert floats.usage.prompt_tokens == 3


def test_ollama_gets_api_embed_and_answers_in_openai_s_shape(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    whole = client.embeddings.create(model="emb-ollama", input=["one two", "three"], encoding_format="float")
    seen = upstream.seen[-1]
    assert seen.path == "/ok/api/embed" and seen.body == {"model": "nomic-embed-text", "input": ["one two", "three"]}
    assert np.allclose([d.embedding for d in whole.data], [fake_vector("one two"), fake_vector("three")], atol=1e-6)
    assert whole.model == "emb-ollama" and whole.usage.prompt_tokens == 3
    short = client.embeddings.create(model="emb-ollama", input="one two", dimensions=3)
    prefix = np.asarray(fake_vector("one two")[:3])
    assert np.allclose(short.data[0].embedding, prefix / np.linalg.norm(prefix), atol=1e-6)
    count = len(upstream.seen)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="emb-ollama", input=[1, 2, 3])
    assert caught.value.body["param"] == "input" and len(upstream.seen) == count  # type: ignore[index]


@pytest.mark.parametrize("body, param", [
    ({"input": []}, "input"),
    ({"input": 42}, "input"),
    ({"input": "x", "dimensions": 0}, "dimensions"),
    ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
])
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_sent_upstream(
    upstream: FakeUpstream, client: openai.OpenAI, body: dict[str, object], param: str,
) -> None:
    count = len(upstream.seen)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="emb", **body)  # type: ignore[arg-type]
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error"
    assert len(upstream.seen) == count


def test_a_budgeted_key_is_billed_for_input_tokens_and_a_repeat_is_a_free_cache_hit(
    upstream: FakeUpstream, served: tuple[str, Gateway],
) -> None:
    base, _ = served
    key = create_key(base, name="embedder", budget={"amount": 1.0, "period": "total"})
    keyed = openai.OpenAI(base_url=base + "/v1", api_key=key["key"], max_retries=0)
    count = len(upstream.seen)
    first = keyed.embeddings.with_raw_response.create(model="emb", input="budgeted words here",
                                                      encoding_format="float")
    second = keyed.embeddings.with_raw_response.create(model="emb", input="budgeted words here",
                                                       encoding_format="float")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.parse().data[0].embedding == first.parse().data[0].embedding
    assert len(upstream.seen) == count + 1
    usage = httpx.get(base + "/v1/usage", headers={"Authorization": f"Bearer {key['key']}"}).json()
    (row,) = usage["by_model"]
    # 3 input tokens at $1.00 per 1M: 3,000 nano-dollars; no output tokens; the hit costs nothing.
    assert (row["model"], row["prompt_tokens"], row["completion_tokens"], row["cost_nanos"]) == ("emb", 3, 0, 3000)
    state = httpx.get(base + f"/admin/keys/{key['id']}", headers=ADMIN).json()
    assert round(state["budgets"][0]["committed_usd"] * 1e9) == 3000


def test_input_guards_mask_and_block_the_texts(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    client.embeddings.create(model="emb-guarded", input=["write to jane@example.com", "plain"])
    sent = upstream.seen[-1].body["input"]
    assert "jane@example.com" not in sent[0] and sent[1] == "plain"
    count = len(upstream.seen)
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="emb-guarded", input=["fine", "about project falcon"])
    assert caught.value.body["param"] == "input[1]" and len(upstream.seen) == count  # type: ignore[index]


def test_retries_and_fallbacks_serve_embeddings(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.fail_times["flaky"] = 1
    retried = client.embeddings.create(model="emb-flaky", input="again", encoding_format="float")
    assert retried.data[0].embedding == fake_vector("again")
    assert [s.path for s in upstream.seen[-2:]] == ["/flaky/v1/embeddings"] * 2
    fell_back = client.embeddings.create(model="emb-down", input="elsewhere", encoding_format="float")
    assert fell_back.data[0].embedding == fake_vector("elsewhere") and upstream.seen[-1].path == "/ok/v1/embeddings"


def test_metrics_count_the_embeddings_endpoint(served: tuple[str, Gateway], client: openai.OpenAI) -> None:
    client.embeddings.create(model="emb", input="counted")
    text = httpx.get(served[0] + "/metrics", headers=ADMIN).text
    assert any('endpoint="embeddings"' in line and 'model="emb"' in line and 'status_code="200"' in line
               for line in text.splitlines() if line.startswith("tokenway_requests_total"))
