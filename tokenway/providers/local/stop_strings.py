"""Stop strings matched across token boundaries, with text held back only while it might match."""

from __future__ import annotations


class StopMatcher:
    """Feed decoded text in; get back what is safe to send, and whether a stop string ended it.

    A token can end with the start of a stop string (``"\\n\\nUs"`` for ``"\\n\\nUser:"``), so
    the longest tail of the text that is a prefix of some stop string waits for the next token.
    """

    __slots__ = ("_held", "_stops")

    def __init__(self, stops: list[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buffer = self._held + text
        cut = min((i for i in (buffer.find(stop) for stop in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return buffer[:cut], True
        keep = max((self._partial(buffer, stop) for stop in self._stops), default=0)
        self._held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        """The text held back, released because generation ended without a stop string."""
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _partial(buffer: str, stop: str) -> int:
        for size in range(min(len(stop) - 1, len(buffer)), 0, -1):
            if buffer.endswith(stop[:size]):
                return size
        return 0
