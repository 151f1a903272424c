"""Rendering a conversation with the chat template a GGUF file carries (Jinja, as HF does).

llama.cpp's own ``llama_chat_apply_template`` only knows templates it can recognise by
heuristics; rendering the Jinja source gives exactly the prompt the model was trained on,
for any model, the same way ``transformers``' ``apply_chat_template`` does.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tokenway.errors import InvalidRequest

# Used when a GGUF file carries no template: ChatML, the most common format of small models.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise InvalidRequest(f"The model's chat template rejected the conversation: {message}", param="messages")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template with the special tokens it refers to."""

    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(source or CHATML)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]]) -> str:
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=True,
                bos_token=self.bos_token, eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise InvalidRequest(
                f"The model's chat template could not render these messages: {exc}", param="messages"
            ) from exc
