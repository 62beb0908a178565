"""Property tests of the SSE framing: whatever the text, and wherever the network
splits the bytes, what chat/frames.py writes parses back to the same events.

The parser is a line-for-line Python port of the page's (static/chat/sse.js), so
the shared vectors in sse_vectors.json check that the port and the page agree.
"""

import codecs
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chat import frames
from testing.sse import events_of, reply_frames

pytestmark = pytest.mark.no_database

VECTORS = json.loads((Path(__file__).parent / "sse_vectors.json").read_text())
DIGITS = re.compile(r"^\d+$")


class SSEParser:
    """static/chat/sse.js in Python: same state, same steps, same results."""

    def __init__(self) -> None:
        # TextDecoder("utf-8") in stream mode: strips one leading BOM, replaces
        # malformed bytes with U+FFFD, keeps a split character until it is whole.
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self.line = ""
        self.skip_lf = False
        self.data = ""
        self.has_data = False
        self.type = ""
        self.last_event_id = ""
        self.retry: int | None = None
        self.events: list[dict[str, str]] = []

    def push(self, chunk: bytes) -> None:
        text = self.decoder.decode(chunk)
        if text:
            self.feed(text)

    def end(self) -> list[dict[str, str]]:
        rest = self.decoder.decode(b"", final=True)
        if rest:
            self.feed(rest)
        return self.events

    def feed(self, text: str) -> None:
        start = 0
        if self.skip_lf:
            self.skip_lf = False
            if text[0] == "\n":
                start = 1
        position = start
        while (match := _EOL.search(text, position)) is not None:
            end = match.start()
            line = self.line + text[start:end]
            self.line = ""
            start = end + 1
            if text[end] == "\r":
                if start == len(text):
                    self.skip_lf = True
                elif text[start] == "\n":
                    start += 1
            position = start
            self.process_line(line)
        self.line += text[start:]

    def process_line(self, line: str) -> None:
        if line == "":
            self.dispatch()
            return
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self.data = f"{self.data}\n{value}" if self.has_data else value
            self.has_data = True
        elif field == "event":
            self.type = value
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry" and DIGITS.match(value):
            self.retry = int(value)

    def dispatch(self) -> None:
        if self.has_data:
            self.events.append(
                {
                    "type": self.type or "message",
                    "data": self.data,
                    "id": self.last_event_id,
                }
            )
        self.data = ""
        self.has_data = False
        self.type = ""


_EOL = re.compile(r"[\r\n]")


def raw_events(reads: list[bytes]) -> list[dict[str, str]]:
    parser = SSEParser()
    for read in reads:
        parser.push(read)
    return parser.end()


def parse(reads: list[bytes]) -> list[dict[str, Any]]:
    """What the page's parser hands to the chat code: id and decoded JSON data."""
    events = []
    for event in raw_events(reads):
        try:
            data = json.loads(event["data"])
        except ValueError:
            data = {"not_json": event["data"]}
        events.append({"id": event["id"], "data": data})
    return events


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


# Text the relay can meet: anything but lone surrogates (orjson refuses them on
# input, so neither a user message nor an upstream delta can carry one).
texts = st.text(st.characters(exclude_categories=["Cs"]))
tricky_texts = st.lists(
    st.sampled_from(
        [
            "\r",
            "\n",
            "\r\n",
            "\n\r",
            "\x00",
            "\u2028",
            "\u2029",
            "\x85",
            "\ufeff",
            "é",
            "€",
            "👍🏽",
            "data: x",
            "id: 9",
            ": comment",
            '"',
            "\\",
            "",
        ]
    )
    | texts,
    max_size=12,
).map("".join)
huge_texts = st.tuples(texts.filter(bool), st.integers(1_000, 40_000)).map(
    lambda pair: (pair[0] * pair[1])[:200_000]
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | tricky_texts,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(tricky_texts, children, max_size=4)
    ),
    max_leaves=12,
)
event_ids = st.integers(0, 2**31)
cut_lists = st.lists(st.integers(0, 10**9), max_size=30)


@given(event_ids, tricky_texts)
@example(0, "")
@example(7, "\r\n\r\n")
@example(1, "\ud7ff\ue000\U0010ffff")
def test_it_round_trips_any_chunk_text(event_id: int, text: str) -> None:
    body = frames.encode(event_id, frames.Chunk(content=text))
    assert parse([body]) == [
        {"id": str(event_id), "data": {"type": "chunk", "content": text}}
    ]


@given(
    event_ids, tricky_texts, tricky_texts, st.dictionaries(tricky_texts, json_values)
)
def test_it_round_trips_any_json_frame(
    event_id: int, text: str, code: str, usage: dict
) -> None:
    for frame in (
        frames.Error(code=code, message=text, message_id=code, retry_after=1.5),
        frames.Done(
            full_response=text,
            timestamp=code,
            message_id=code,
            conversation_id=text,
            status="complete",
            usage=usage,
        ),
        frames.Annotation(kind="file_citation", text=text, quote=code),
    ):
        body = frames.encode(event_id, frame)
        assert parse([body]) == [{"id": str(event_id), "data": frame.model_dump()}]


@given(event_ids, tricky_texts)
def test_it_writes_each_frame_as_exactly_two_lines(event_id: int, text: str) -> None:
    # A raw CR or LF in the JSON would end the data line early.
    for body in (
        frames.encode(event_id, frames.Chunk(content=text)),
        frames.encode(event_id, frames.Error(code="c", message=text, message_id="m")),
    ):
        data, tail, blank = body.split(b"\n", 2)
        assert tail == b"id: %d" % event_id
        assert data.startswith(b"data: ")
        assert b"\r" not in data
        assert blank == b"\n"
        # Only the line feeds of the framing itself.
        assert body.count(b"\n") == 3


@settings(max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(event_ids, huge_texts, cut_lists)
def test_it_round_trips_huge_chunks_split_anywhere(
    event_id: int, text: str, cuts: list[int]
) -> None:
    body = frames.encode(event_id, frames.Chunk(content=text))
    events = parse(split_at(body, cuts))
    assert events == [{"id": str(event_id), "data": {"type": "chunk", "content": text}}]


def reply_stream(
    chunks: list[str], keepalives: list[bool]
) -> tuple[bytes, list[dict[str, Any]]]:
    """A reply framed the way the view frames it, and the events it must give."""
    reply = reply_frames(chunks)
    body = b""
    for seq, (frame, keepalive) in enumerate(
        zip(reply, [*keepalives, *[False] * len(reply)], strict=False)
    ):
        if keepalive:
            body += frames.KEEPALIVE
        body += frames.encode(seq, frame)
    return body, events_of(reply)


@given(
    st.lists(tricky_texts, max_size=8),
    st.lists(st.booleans(), max_size=10),
    cut_lists,
)
def test_it_parses_a_reply_split_at_any_bytes(
    chunks: list[str], keepalives: list[bool], cuts: list[int]
) -> None:
    body, events = reply_stream(chunks, keepalives)
    assert parse(split_at(body, cuts)) == events


def tricky_cuts(stream: bytes) -> list[int]:
    """Every cut inside a multi-byte character or between a CR and its LF."""
    return [
        cut
        for cut in range(1, len(stream))
        if 0x80 <= stream[cut] < 0xC0 or stream[cut - 1 : cut + 1] == b"\r\n"
    ]


@given(st.lists(tricky_texts, min_size=1, max_size=4))
def test_it_parses_a_reply_split_inside_every_character(chunks: list[str]) -> None:
    # Each byte of each multi-byte character is a boundary, and in the CRLF copy
    # every CR/LF pair is split once. (Cuts anywhere else: the test above.)
    body, events = reply_stream(chunks, [True])
    for stream in (body, body.replace(b"\n", b"\r\n")):
        for cut in tricky_cuts(stream):
            assert parse([stream[:cut], stream[cut:]]) == events


@given(
    st.lists(tricky_texts, max_size=6),
    st.sampled_from(["\n", "\r\n", "\r"]),
    cut_lists,
)
def test_it_accepts_every_line_ending_split_anywhere(
    chunks: list[str], ending: str, cuts: list[int]
) -> None:
    # A proxy may rewrite line endings; a split may fall between CR and LF. (One
    # ending per stream: a CR line end followed by an LF blank line reads as CRLF.)
    body, events = reply_stream(chunks, [True, False, True])
    rewritten = body.replace(b"\n", ending.encode())
    assert parse(split_at(rewritten, cuts)) == events


@given(st.binary(max_size=300), cut_lists)
def test_it_never_fails_on_garbage_split_anywhere(raw: bytes, cuts: list[int]) -> None:
    # Same events however the bytes arrive, and no exception for any input.
    assert raw_events(split_at(raw, cuts)) == raw_events([raw])


@pytest.mark.parametrize("case", VECTORS, ids=[case["name"] for case in VECTORS])
def test_the_port_parses_the_shared_vectors(case: dict[str, Any]) -> None:
    reads = [
        read.encode() if isinstance(read, str) else bytes(read)
        for read in case["reads"]
    ]
    assert parse(reads) == case["events"]
