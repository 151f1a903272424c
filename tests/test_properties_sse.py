"""Property tests of the SSE framing (tokenway/protocol.py): whatever the framing and however the bytes
arrive, the decoder finds the same events, and what the gateway writes it reads back unchanged.

The streams are generated from a model of events (data lines, comments, other fields, each line with
its own line end: LF, CR or CRLF), so the expected payloads come from the model, not from the code
under test. Hypothesis runs derandomized (the same examples every run): CI is not flaky, and a
failure prints the smallest stream and split that break the property.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.property_support import PROPERTY, cuts
from tokenway.protocol import SSE_DONE, SSEDecoder, iter_sse_data, sse_data, sse_events

PROPERTY = settings(PROPERTY, max_examples=300)  # streams are cheap to check: more of them

# A line's value: any bytes but the line ends (a value cannot hold one in any framing).
VALUE = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
LINE_END = st.sampled_from([b"\n", b"\r", b"\r\n"])


@dataclass(frozen=True)
class Line:
    text: bytes
    data: bytes | None  # the value this line adds to the event's data, if it is a data line


@st.composite
def data_lines(draw: st.DrawFn) -> Line:
    value = draw(VALUE)
    form = draw(st.sampled_from(["space", "bare", "name only"]))
    if form == "name only" or (form == "bare" and not value):
        return Line(b"data", b"")  # the field name alone is the field with an empty value
    if form == "space":
        return Line(b"data: " + value, value)
    # "data:" then the value; a value that starts with a space loses that space (the optional one).
    return Line(b"data:" + value, value[1:] if value.startswith(b" ") else value)


OTHER_LINES = st.one_of(
    VALUE.map(lambda v: Line(b":" + v, None)),  # a comment (": keep-alive")
    st.sampled_from([b"event", b"id", b"retry"]).flatmap(
        lambda name: VALUE.map(lambda v: Line(name + b": " + v, None))
    ),
)
EVENT = st.lists(st.one_of(data_lines(), OTHER_LINES), min_size=1, max_size=5)


def expected_payload(event: list[Line]) -> bytes | None:
    """What the SSE spec dispatches for one event: its data values joined by LF, if that is not empty."""
    values = [line.data for line in event if line.data is not None]
    payload = b"\n".join(values)
    return payload or None


@st.composite
def streams(draw: st.DrawFn, last_blank_line: bool = True) -> tuple[bytes, list[bytes]]:
    """A byte stream of whole events in mixed framings, and the payloads it carries. Without
    ``last_blank_line`` the last event's blank line is left out."""
    events = draw(st.lists(EVENT, max_size=6))
    out, payloads, previous_end = b"", [], b""
    for i, event in enumerate(events):
        last = i == len(events) - 1
        ended = [*event, Line(b"", None)] if last_blank_line or not last else event  # a blank line ends an event
        for line in ended:
            end = draw(LINE_END)
            if previous_end == b"\r" and not line.text and end == b"\n":
                end = b"\r"  # CR then a bare LF is one CRLF line end, not a blank line: keep the blank line
            out += line.text + end
            previous_end = end
        payload = expected_payload(event)
        if payload is not None:
            payloads.append(payload)
    return out, payloads


@st.composite
def stream_and_split(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[bytes]]:
    stream, payloads = draw(streams())
    return stream, payloads, draw(cuts(stream))


def decode(pieces: list[bytes]) -> bytes:
    decoder = SSEDecoder()
    return b"".join(decoder.feed(piece) for piece in pieces)


@PROPERTY
@given(stream_and_split())
def test_any_split_of_a_stream_gives_the_events_of_the_whole(case: tuple[bytes, list[bytes], list[bytes]]) -> None:
    stream, payloads, pieces = case
    whole = decode([stream])
    assert decode(pieces) == whole
    assert iter_sse_data(whole) == payloads
    assert whole == sse_events(payloads)  # the gateway's one framing, whatever came in


@PROPERTY
@given(stream_and_split())
def test_one_byte_at_a_time_gives_the_same_events(case: tuple[bytes, list[bytes], list[bytes]]) -> None:
    stream, payloads, _ = case
    assert iter_sse_data(decode([stream[i:i + 1] for i in range(len(stream))])) == payloads


@PROPERTY
@given(streams())
def test_iter_sse_data_reads_any_framing(case: tuple[bytes, list[bytes]]) -> None:
    stream, payloads = case
    assert iter_sse_data(stream) == payloads


@PROPERTY
@given(streams(last_blank_line=False))
def test_the_last_blank_line_may_be_missing_for_iter_sse_data(case: tuple[bytes, list[bytes]]) -> None:
    stream, payloads = case
    assert iter_sse_data(stream) == payloads


@PROPERTY
@given(streams())
def test_an_unfinished_event_is_held_back_until_its_blank_line(case: tuple[bytes, list[bytes]]) -> None:
    stream, payloads = case
    decoder = SSEDecoder()
    out = decoder.feed(stream) + decoder.feed(b"data: tail")
    assert iter_sse_data(out) == payloads
    assert iter_sse_data(decoder.feed(b"\n\n")) == [b"tail"]


# A payload the gateway writes: anything but CR (JSON never holds a raw one); LFs make several data lines.
PAYLOAD = st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\r", b"")).filter(bool)


@PROPERTY
@given(PAYLOAD)
def test_sse_data_round_trips(payload: bytes) -> None:
    assert iter_sse_data(sse_data(payload)) == [payload]
    assert iter_sse_data(SSEDecoder().feed(sse_data(payload))) == [payload]


@PROPERTY
@given(st.lists(PAYLOAD, max_size=8), st.data())
def test_sse_events_round_trip_through_the_decoder(payloads: list[bytes], data: st.DataObject) -> None:
    block = sse_events(payloads) + SSE_DONE
    assert block == b"".join(sse_data(p) for p in payloads) + SSE_DONE
    pieces = data.draw(cuts(block))
    assert iter_sse_data(decode(pieces)) == [*payloads, b"[DONE]"]
