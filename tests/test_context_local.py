"""Context shaping for the embedded model: its window is its own context size, and its prompts are counted
with its own chat template and GGUF tokenizer, exactly as the engine will see them."""

from __future__ import annotations

import openai
import pytest

from tests.servers import running_gateway

pytest.importorskip("llama_cpp")

CONFIG = """
models:
  - name: local
    deployments:
      - {provider: local, context_window: 256, slots: 1, threads: 2, warmup: false, requantize: "off"}
    context: {strategy: trim}
"""


def test_the_embedded_models_prompt_is_trimmed_to_its_window_counted_exactly() -> None:
    turns = []
    for i in range(8):
        turns += [{"role": "user", "content": f"Question {i}: what is the colour of the sky on day {i}? " * 2},
                  {"role": "assistant", "content": f"On day {i} the sky was blue, with a few clouds. " * 2}]
    messages = [{"role": "system", "content": "Answer in one word."}, *turns,
                {"role": "user", "content": "And today?"}]
    with running_gateway(CONFIG) as base:
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="local", messages=messages, max_tokens=4, temperature=0)  # type: ignore[arg-type]
        completion = raw.parse()
    header = raw.headers["x-tokenway-context"]
    assert header.startswith("trim;") and "counted=gguf" in header
    before, after = (int(n) for n in header.split("tokens=")[1].split(";")[0].split("->"))
    assert before > 256 - 4 >= after
    assert completion.usage is not None and completion.usage.prompt_tokens == after  # the engine's own count
