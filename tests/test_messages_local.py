"""/v1/messages in front of the embedded model (the zero-config default), with the anthropic SDK: a real
model's answer, whole and streamed, translated both ways."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from tests.servers import running_gateway

DEFAULT = "models:\n  - name: local\n    deployments:\n      - provider: local\n"
ASK = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client() -> Iterator[anthropic.Anthropic]:
    with running_gateway(DEFAULT) as url:
        yield anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=60)


def test_the_embedded_model_answers_whole_and_streamed(client: anthropic.Anthropic) -> None:
    greedy = {"temperature": 0}  # the same answer both times
    whole = client.messages.create(model="local", max_tokens=12, messages=ASK, extra_body=greedy)  # type: ignore[arg-type]
    with client.messages.stream(model="local", max_tokens=12, messages=ASK, extra_body=greedy) as stream:  # type: ignore[arg-type]
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    text = whole.content[0].text if whole.content[0].type == "text" else ""
    assert text.strip() and streamed == text
    assert whole.stop_reason in ("end_turn", "max_tokens") and final.stop_reason == whole.stop_reason
    assert 0 < whole.usage.output_tokens <= 12 and whole.usage.input_tokens > 0
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens,
                                                                     whole.usage.output_tokens)
