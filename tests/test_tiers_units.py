"""Small-model routing in process: the scorer's features and score, the escalation checks on whole
answers and stream starts, the router's ladder and override names, the neighbours vote, and the
config's rules (each error at its line)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.inprocess import gateway
from tokenway.config import ConfigError, parse_config
from tokenway.errors import InvalidRequest
from tokenway.observability.logging import JsonLog
from tokenway.observability.metrics import Metrics
from tokenway.policies.access import AccessPolicy
from tokenway.prompts.policy import ApplyPrompt
from tokenway.protocol import SSE_DONE, sse_event
from tokenway.tiers.checks import PEEK_CHARS, StreamPeek, answer_problem, text_problem
from tokenway.tiers.neighbours import NeighbourScorer, SampleError, read_samples
from tokenway.tiers.options import TierRouterConfig
from tokenway.tiers.policy import TierDecision, TierRouter, TierRouting, open_tiers
from tokenway.tiers.scorer import features, score_request


def chat(*turns: str, **extra: Any) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for turn in turns[:-1]:
        messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "Sure."}]
    return {"model": "auto", "messages": [*messages, {"role": "user", "content": turns[-1]}], **extra}


HARD = ("Design a rate limiter in Rust: implement token buckets per key, analyze the memory trade-offs, "
        "and prove the operations are O(1).")


def test_greetings_and_one_fact_questions_score_low_and_proofs_and_designs_high() -> None:
    assert score_request(chat("hi there!")) < 0.15
    assert score_request(chat("What is the capital of Australia?")) < 0.15
    assert 0.15 <= score_request(chat("Explain how vaccines train the immune system.")) < 0.5
    assert score_request(chat(HARD)) >= 0.5
    assert score_request(chat("Prove by induction that the sum of the first n odd numbers is n^2.")) > score_request(
        chat("What is 7 times 8?"))


def test_code_math_tools_length_and_depth_each_raise_the_score() -> None:
    plain = score_request(chat("Tell me about it."))
    assert score_request(chat("Tell me about this python code.")) > plain
    assert score_request(chat("Tell me about this equation.")) > plain
    assert score_request(chat("Tell me about it.", tools=[{"type": "function", "function": {"name": "f"}}])) > plain
    assert score_request(chat("Tell me about it. " * 40)) > plain
    assert score_request(chat("One.", "Two.", "Three.", "Tell me about it.")) > plain


def test_features_read_text_parts_tool_results_and_completions_prompts() -> None:
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Fix this bug"},
                                                        {"type": "image_url", "image_url": {"url": "x"}}]}]}
    found = features(parts)
    assert found.text == "Fix this bug" and found.code and found.turns == 1
    assert features({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]}).tools
    prompt = features({"prompt": "Solve the equation 3x + 7 = 22"})
    assert prompt.math and prompt.turns == 1


def test_whole_answers_fail_the_checks_they_break_and_tool_calls_pass() -> None:
    def body(message: dict[str, Any]) -> bytes:
        return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", **message}}]}).encode()

    every = {"empty", "refusal", "invalid_json"}
    assert answer_problem(body({"content": "  "}), False, every) == "empty"
    assert answer_problem(body({"content": None, "refusal": "No."}), False, every) == "refusal"
    assert answer_problem(body({"content": "I'm sorry, but I can't help with that."}), False, every) == "refusal"
    assert answer_problem(body({"content": "Sorry to hear that! Here is a plan."}), False, every) is None
    assert answer_problem(body({"content": "I'm sorry to hear that. Rest and drink water."}), False, every) is None
    assert answer_problem(body({"content": "I\u2019m sorry, but I can\u2019t do that."}), False, every) == "refusal"
    assert answer_problem(body({"content": "As an AI, I have no opinions."}), False, every) == "refusal"
    assert answer_problem(body({"content": "{\"a\": 1"}), True, every) == "invalid_json"
    assert answer_problem(body({"content": "{\"a\": 1}"}), True, every) is None
    assert answer_problem(body({"content": "not json"}), False, every) is None  # JSON was not asked for
    assert answer_problem(body({"content": None, "tool_calls": [{"id": "c"}]}), True, every) is None
    assert answer_problem(body({"content": ""}), False, {"refusal"}) is None  # a check not configured
    assert answer_problem(b'{"choices": [{"index": 0, "text": ""}]}', False, every) == "empty"  # completions
    assert answer_problem(b"[1, 2]", False, every) is None  # not a completion object: not judged


def _chunk(**delta: Any) -> bytes:
    return sse_event({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]})


def test_a_stream_is_judged_from_as_little_as_the_checks_need() -> None:
    refusal_on = StreamPeek(False, {"empty", "refusal"})
    assert not refusal_on.feed(_chunk(role="assistant", content=""))
    assert not refusal_on.feed(_chunk(content="I'm sorry, but"))  # too little text to tell yet
    assert refusal_on.feed(_chunk(content=" I can't help with that, it is outside what I do."))
    assert refusal_on.problem == "refusal"
    json_only = StreamPeek(True, {"invalid_json"})
    assert json_only.feed(_chunk(content="Here")) and json_only.problem == "invalid_json"  # the first character
    empty = StreamPeek(False, {"empty", "refusal"})
    assert empty.feed(_chunk(role="assistant", content="") + SSE_DONE) and empty.problem == "empty"
    tools = StreamPeek(False, {"empty"})
    assert tools.feed(_chunk(tool_calls=[{"index": 0, "id": "c"}])) and tools.problem is None
    fine = StreamPeek(False, {"empty", "refusal"})
    assert fine.feed(_chunk(content="x" * PEEK_CHARS)) and fine.problem is None


def test_text_checks_see_only_the_start_until_the_text_is_whole() -> None:
    assert text_problem("{\"a\": ", None, True, {"invalid_json"}, finished=False) is None
    assert text_problem("{\"a\": ", None, True, {"invalid_json"}, finished=True) == "invalid_json"


def _router(**extra: Any) -> TierRouter:
    return TierRouter(TierRouterConfig.model_validate({"name": "auto", "tiers": [
        {"name": "tiny", "model": "m-nano", "up_to": 0.2}, {"model": "m-mini", "up_to": 0.6},
        {"name": "big", "model": "m-full"}], **extra}))


def test_the_ladder_takes_the_first_tier_above_the_score_and_the_header_names_any_tier() -> None:
    router = _router()
    assert [router.for_score(s) for s in (0.0, 0.19, 0.2, 0.59, 0.6, 1.0)] == [0, 0, 1, 1, 2, 2]
    assert [router.named(n) for n in ("tiny", "m-mini", "big", "m-full", "small", "large", "BIG")] == [
        0, 1, 2, 2, 0, 2, 2]
    with pytest.raises(InvalidRequest) as refused:
        router.named("medium")
    assert refused.value.param == "x-tokenway-tier" and "tiny" in refused.value.message


async def test_the_router_scores_with_the_heuristic_until_neighbours_are_ready() -> None:
    router = _router()
    score, scorer = await router.score(chat("hi"))
    assert scorer == "heuristic" and score < 0.2


def test_the_decision_goes_to_the_log_as_a_small_object() -> None:
    decision = TierDecision("auto", "big", "escalated:empty", 0.123456, "heuristic", ["tiny"])
    assert decision.for_log() == {"router": "auto", "tier": "big", "reason": "escalated:empty", "score": 0.123,
                                  "scorer": "heuristic", "escalated_from": ["tiny"]}
    assert TierDecision("auto", "tiny", "override").for_log() == {"router": "auto", "tier": "tiny",
                                                                   "reason": "override"}


def test_neighbours_vote_by_similarity() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    scorer = NeighbourScorer(None, vectors, np.array([0, 0, 1, 1], dtype=np.float32), k=2)  # type: ignore[arg-type]
    assert scorer.score_vector(np.array([1, 0], dtype=np.float32)) == pytest.approx(0.0)
    assert scorer.score_vector(np.array([0, 1], dtype=np.float32)) == pytest.approx(1.0)


def test_sample_files_name_the_line_of_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_text('{"prompt": "hi", "label": "simple"}\n\n{"prompt": "prove it", "label": "complex"}\n')
    assert [s.score for s in read_samples(path)] == [0.0, 1.0]
    path.write_text('{"prompt": "hi", "label": "simple"}\n{"prompt": "x", "label": "hard"}\n')
    with pytest.raises(SampleError, match=r"samples.jsonl:2: .*'hard'"):
        read_samples(path)
    path.write_text("not json\n")
    with pytest.raises(SampleError, match=r"samples.jsonl:1: expected a JSON object"):
        read_samples(path)


MODELS = """models:
  - name: small
    deployments: [{provider: openai, api_base: 'http://127.0.0.1:9/v1'}]
  - name: large
    deployments: [{provider: openai, api_base: 'http://127.0.0.1:9/v1'}]
tiers:
"""


@pytest.mark.parametrize(("router", "line", "message"), [
    ("  - name: small\n    tiers: [{model: small, up_to: 0.3}, {model: large}]\n", 7,
     "'small' is already a model or router name"),
    ("  - name: auto\n    tiers:\n      - {model: small, up_to: 0.3}\n      - {model: large, up_to: 0.9}\n", 7,
     "the last tier (large) takes every score left"),
    ("  - name: auto\n    tiers:\n      - {model: small, up_to: 0.5}\n      - {model: large, up_to: 0.3}\n"
     "      - {model: small, name: again}\n", 7, "'up_to' must grow"),
    ("  - name: auto\n    scorer: neighbours\n    tiers: [{model: small, up_to: 0.3}, {model: large}]\n", 7,
     "scorer 'neighbours' needs 'samples'"),
    ("  - name: auto\n    samples: /nowhere/samples.jsonl\n    tiers: [{model: small, up_to: 0.3}, {model: large}]\n",
     8, "the samples file '/nowhere/samples.jsonl' does not exist"),
    ("  - name: auto\n    escalate_on: [empty, slow]\n    tiers: [{model: small, up_to: 0.3}, {model: large}]\n",
     8, "tiers[0].escalate_on[1]"),
])
def test_router_config_errors_name_the_line(router: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(MODELS + router, "tokenway.yaml")
    assert str(error.value).startswith(f"tokenway.yaml:{line}:") and message in str(error.value)


async def test_the_policy_sits_after_access_and_prompts_and_only_when_a_router_is_configured() -> None:
    fakes = "models: [{name: a, deployments: [{provider: fake}]}, {name: b, deployments: [{provider: fake}]}]\n"
    async with gateway(fakes + "tiers: [{name: auto, tiers: [{model: a, up_to: 0.5}, {model: b}]}]\n") as gw:
        kinds = [type(policy) for policy in gw.app.policies(gw.app.models, gw.app.config)]
    # after the prompt's messages are in (the scorer reads the whole conversation), before guards and cache
    assert kinds[:3] == [AccessPolicy, ApplyPrompt, TierRouting]
    async with gateway(fakes) as gw:
        assert TierRouting not in [type(policy) for policy in gw.app.policies(gw.app.models, gw.app.config)]


async def test_a_neighbours_router_embeds_its_samples_after_start_and_then_scores_by_them(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    rows = [("hello there", "simple"), ("thanks a lot!", "simple"), ("what is the capital of peru", "simple"),
            ("prove the theorem by induction on n", "complex"), ("design a fault tolerant consensus protocol",
                                                                  "complex"),
            ("derive the gradient of the loss and prove it converges", "complex")]
    samples.write_text("".join(json.dumps({"prompt": p, "label": label}) + "\n" for p, label in rows))
    config = parse_config(MODELS + f"  - name: auto\n    scorer: neighbours\n    samples: {samples}\n"
                          "    neighbours: 3\n    tiers: [{model: small, up_to: 0.5}, {model: large}]\n")
    routing = await open_tiers(config, Metrics(), JsonLog(io.BytesIO()), None)
    assert routing is not None and routing.loading is not None
    try:
        await routing.loading
        router = routing.routers["auto"]
        assert router.neighbours is not None
        hard, scorer = await router.score(chat("Prove by induction that this sequence converges."))
        easy, _ = await router.score(chat("hello, thanks!"))
    finally:
        await routing.aclose()
    assert scorer == "neighbours" and easy < 0.5 <= hard


async def test_a_bad_samples_file_stops_the_start_naming_its_line(tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"prompt": "hi", "label": "simple"}\n{"prompt": "hm"}\n')
    config = parse_config(MODELS + f"  - name: auto\n    scorer: neighbours\n    samples: {samples}\n"
                          "    tiers: [{model: small, up_to: 0.5}, {model: large}]\n")
    with pytest.raises(SampleError, match=r"samples.jsonl:2: expected a JSON object with 'prompt' and 'label'"):
        await open_tiers(config, Metrics(), JsonLog(io.BytesIO()), None)
