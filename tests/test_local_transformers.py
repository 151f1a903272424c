"""The transformers engine on CPU, with the tiny Llama-shaped fixture and random (dummy) weights.

The GPU path is the same code with device: cuda; CI has no GPU, so these tests are its guard.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tokenway.errors import InvalidRequest, Overloaded
from tokenway.providers.local.engine import EngineLoad, GenerationRequest, SamplingParams, TokenPiece
from tokenway.providers.local.options import LocalOptions
from tokenway.providers.local.transformers_engine import TransformersEngine

TINY = Path(__file__).parent / "fixtures" / "tiny_llama"
SLOTS = 4
QUEUE = 4
CONTEXT = 256
# Every slot at a full window in 32-token blocks, over the scheduler's 15% safety margin.
KV_CELLS = math.ceil(SLOTS * (CONTEXT // 32) / 0.85) * 32

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


def options(**overrides: object) -> LocalOptions:
    fields: dict[str, Any] = {
        "engine": "transformers",
        "model_path": str(TINY),
        "load_format": "dummy",
        "device": "cpu",
        "dtype": "float32",
        "context_window": CONTEXT,
        "slots": SLOTS,
        "queue_size": QUEUE,
        "threads": 2,
    }
    fields.update(overrides)
    return LocalOptions.model_validate(fields)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(options())
    await engine.start()
    yield engine
    await engine.aclose()


def request(prompt: list[int], max_tokens: int = 8, **params: Any) -> GenerationRequest:
    return GenerationRequest(prompt_tokens=prompt, params=SamplingParams(max_tokens=max_tokens, **params))


async def collect(engine: TransformersEngine, req: GenerationRequest) -> list[TokenPiece]:
    return [piece async for piece in engine.generate(req)]


async def settled(engine: TransformersEngine) -> EngineLoad:
    """The engine's load once the batching thread has freed every KV block (at most 10 s)."""
    for _ in range(1000):  # the thread frees cancelled requests at its next step: poll, there is no event
        if not engine.load().kv_used:
            break
        await asyncio.sleep(0.01)
    return engine.load()


async def test_starts_with_an_explicitly_sized_cache(engine: TransformersEngine) -> None:
    # Sized from slots and context_window, not from free memory as the manager's default is.
    assert await settled(engine) == EngineLoad(running=0, waiting=0, slots=SLOTS, kv_used=0, kv_total=KV_CELLS)
    assert engine.context_window == CONTEXT


async def test_chat_prompt_uses_the_folders_template(engine: TransformersEngine) -> None:
    ids = engine.chat_prompt([{"role": "user", "content": [{"type": "text", "text": "Hello"}]}])
    text = engine._require_tokenizer().decode(ids)
    assert text == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"


async def test_generates_to_max_tokens_and_finishes_with_length(engine: TransformersEngine) -> None:
    prompt = engine.chat_prompt([{"role": "user", "content": "Write a poem"}])
    pieces = await collect(engine, request(prompt, max_tokens=12, temperature=0.0, ignore_eos=True))
    assert len(pieces) == 12
    assert [p.finish_reason for p in pieces] == [None] * 11 + ["length"]
    assert all(0 <= p.token_id < 512 for p in pieces)


async def test_greedy_is_deterministic_alone_and_in_a_batch(engine: TransformersEngine) -> None:
    prompt = engine.text_prompt("The quick brown fox")
    greedy = request(prompt, max_tokens=16, temperature=0.0, ignore_eos=True)
    first = [p.token_id for p in await collect(engine, greedy)]
    second = [p.token_id for p in await collect(engine, greedy)]
    others = [request(engine.text_prompt(f"Numbers {i}"), max_tokens=16, temperature=1.0) for i in range(3)]
    batched = await asyncio.gather(collect(engine, greedy), *(collect(engine, r) for r in others))
    assert first == second == [p.token_id for p in batched[0]]


async def test_all_greedy_steps_take_the_argmax_with_the_same_tokens(engine: TransformersEngine) -> None:
    assert engine._manager is not None
    runner = engine._manager.batch_processor.model_runner
    prompt = engine.text_prompt("Once upon a time")
    greedy = request(prompt, max_tokens=12, temperature=0.0, ignore_eos=True)
    alone = [p.token_id for p in await collect(engine, greedy)]
    assert runner.do_sample is False  # its steps had only greedy rows
    # Beside a sampled request the steps sample, the greedy row through top-p 0: the same tokens.
    sampled = request(prompt, max_tokens=12, temperature=1.0, ignore_eos=True)
    mixed = await asyncio.gather(collect(engine, greedy), collect(engine, sampled))
    assert [p.token_id for p in mixed[0]] == alone
    await collect(engine, sampled)
    assert runner.do_sample is True


async def test_requests_beyond_the_slots_queue_and_all_finish(engine: TransformersEngine) -> None:
    prompts = [engine.text_prompt(f"Request number {i} says hello") for i in range(SLOTS + QUEUE)]
    seen: list[EngineLoad] = []
    work = asyncio.gather(
        *(collect(engine, request(p, max_tokens=10 + i, ignore_eos=True)) for i, p in enumerate(prompts))
    )
    while not work.done():
        seen.append(engine.load())
        await asyncio.sleep(0.002)
    results = await work
    assert [len(r) for r in results] == [10 + i for i in range(len(prompts))]
    assert all(r[-1].finish_reason == "length" for r in results)
    assert max(load.running for load in seen) == SLOTS
    assert max(load.waiting for load in seen) > 0
    assert (await settled(engine)).kv_used == 0


async def test_a_full_queue_and_a_passed_deadline_are_overloaded(engine: TransformersEngine) -> None:
    prompt = engine.text_prompt("Busy")
    streams = [engine.generate(request(prompt, max_tokens=100, ignore_eos=True)) for _ in range(SLOTS + QUEUE)]
    firsts = [asyncio.ensure_future(anext(s)) for s in streams]
    await asyncio.sleep(0)  # every request takes its slot or queue place
    try:
        with pytest.raises(Overloaded, match="queue places are taken"):
            await anext(engine.generate(request(prompt)))
        await asyncio.gather(*firsts[:SLOTS])
        for first in firsts[SLOTS:]:  # the queued requests leave: room in the queue, slots still busy
            first.cancel()
        await asyncio.gather(*firsts[SLOTS:], return_exceptions=True)
        assert engine.load().waiting == 0
        waiting = GenerationRequest(prompt, SamplingParams(max_tokens=4), deadline=time.monotonic() + 0.05)
        with pytest.raises(Overloaded, match="no slot freed up"):
            await anext(engine.generate(waiting))
    finally:
        for first in firsts:
            first.cancel()
        await asyncio.gather(*firsts, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
    assert (await settled(engine)).kv_used == 0
    assert engine.load().running == 0


async def test_a_stop_token_ends_the_sequence_with_stop(engine: TransformersEngine) -> None:
    prompt = engine.text_prompt("Hello! How are you today?")
    free_run = await collect(engine, request(prompt, max_tokens=8, temperature=0.0, ignore_eos=True))
    target = free_run[3].token_id
    cut = free_run.index(next(p for p in free_run if p.token_id == target)) + 1
    stopped = await collect(
        engine, request(prompt, max_tokens=8, temperature=0.0, ignore_eos=True, stop_token_ids=[target])
    )
    assert [p.token_id for p in stopped] == [p.token_id for p in free_run[:cut]]
    assert stopped[-1].finish_reason == "stop"


async def test_closing_the_iterator_cancels_and_frees_the_blocks(engine: TransformersEngine) -> None:
    prompt = engine.text_prompt("A long answer, please")
    stream = engine.generate(request(prompt, max_tokens=CONTEXT - len(prompt) - 1, ignore_eos=True))
    received = [await anext(stream) for _ in range(3)]
    assert len(received) == 3
    assert engine.load().kv_used > 0
    await stream.aclose()
    assert await settled(engine) == EngineLoad(running=0, waiting=0, slots=SLOTS, kv_used=0, kv_total=KV_CELLS)
    # The slot is usable again right away.
    assert len(await collect(engine, request(prompt, max_tokens=4, ignore_eos=True))) == 4


async def test_the_event_loop_stays_responsive_while_decoding(engine: TransformersEngine) -> None:
    prompt = engine.text_prompt("Keep going")
    long = request(prompt, max_tokens=60, ignore_eos=True)
    work = asyncio.gather(*(collect(engine, long) for _ in range(SLOTS + QUEUE)))
    gaps = []
    while not work.done():
        start = time.perf_counter()
        await asyncio.sleep(0.005)
        gaps.append(time.perf_counter() - start)
    await work
    assert len(gaps) > 3
    assert max(gaps) < 0.5  # the loop never waited on the model


async def test_a_prompt_past_the_context_window_is_rejected(engine: TransformersEngine) -> None:
    with pytest.raises(InvalidRequest, match="context window is 256"):
        await collect(engine, request([5] * CONTEXT, max_tokens=4))


async def test_a_folder_without_config_fails_start_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        await TransformersEngine(options(model_path=str(tmp_path))).start()


async def test_auto_load_format_wants_weight_files() -> None:
    with pytest.raises(FileNotFoundError, match="load_format: dummy"):
        await TransformersEngine(options(load_format="auto")).start()
