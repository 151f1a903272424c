"""Which messages of a conversation may go, and in what order: pure functions over the message list.

A conversation is read as three parts:

- the **system prompt**: the leading ``system``/``developer`` messages, always kept;
- **turns**, oldest first: each starts at a ``user`` message and runs to the next one, so an
  assistant's tool calls and the ``tool`` results that answer them are always in the same turn
  (messages between the system prompt and the first user message form a turn of their own);
- the **last turn**: from the last ``user`` message to the end (with the tool calls and results an
  agent loop added after it), always kept.

Trimming drops whole turns, oldest first, so no ``tool`` message is ever left without its call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tokenway.shaping.counting import REPLY_PRIMING, Message

_SYSTEM_ROLES = ("system", "developer")


@dataclass(frozen=True, slots=True)
class Layout:
    pinned: int  # messages[:pinned] are the system prompt
    turns: tuple[tuple[int, int], ...]  # droppable [start, end) spans, oldest first
    last: int  # messages[last:] are the last turn

    def kept(self, messages: Sequence[Message], dropped: int) -> list[Message]:
        """The conversation without its ``dropped`` oldest turns."""
        start = self.turns[dropped][0] if dropped < len(self.turns) else self.last
        return [*messages[: self.pinned], *messages[start:]]

    def dropped_messages(self, messages: Sequence[Message], dropped: int) -> list[Message]:
        """The messages of the ``dropped`` oldest turns."""
        end = self.turns[dropped][0] if dropped < len(self.turns) else self.last
        return list(messages[self.pinned:end])


def layout(messages: Sequence[Message]) -> Layout:
    pinned = 0
    while pinned < len(messages) and messages[pinned].get("role") in _SYSTEM_ROLES:
        pinned += 1
    last = next((i for i in range(len(messages) - 1, pinned - 1, -1) if messages[i].get("role") == "user"), None)
    if last is None:  # no user message: nothing is a turn that could go
        return Layout(pinned, (), pinned)
    starts = [pinned, *(i for i in range(pinned + 1, last) if messages[i].get("role") == "user")]
    spans = tuple((start, end) for start, end in zip(starts, [*starts[1:], last], strict=True) if start < end)
    return Layout(pinned, spans, last)


def turns_to_drop(costs: Sequence[int], shape: Layout, budget: int, extra: int = 0) -> int | None:
    """How many of the oldest turns must go for the prompt to fit ``budget`` tokens, with ``extra``
    tokens added (a summary's); None when even the system prompt and the last turn alone do not fit.

    ``costs`` are the messages' tokens (``Counter.message_tokens``)."""
    total = REPLY_PRIMING + extra + sum(costs)
    dropped = 0
    while total > budget:
        if dropped == len(shape.turns):
            return None
        start, end = shape.turns[dropped]
        total -= sum(costs[start:end])
        dropped += 1
    return dropped
