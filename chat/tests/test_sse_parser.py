"""The page's SSE parser (static/chat/sse.js), run with node.

`sse_vectors.json` is shared with any other parser of the chat stream: a list of
cases `{"name", "reads", "events"}`. `reads` are the pieces the network delivers,
in order; each is a string (its UTF-8 bytes) or a list of byte values, so a case
can split inside a multi-byte character. `events` are what a parser must produce
once the stream ends: `{"id": <last event id, "" if none>, "data": <the JSON of
the data lines joined with "\\n">}`, in order. Comments dispatch nothing, and an
event without its closing blank line at the end of the stream is dropped.
"""

import base64
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from chat import frames
from testing.sse import events_of, reply_frames

BASE_DIR = Path(__file__).resolve().parents[2]
PARSER = BASE_DIR / "static" / "chat" / "sse.js"
VECTORS = json.loads((Path(__file__).parent / "sse_vectors.json").read_text())

# Reads base64 reads from stdin, one list per stream; prints the events per stream.
RUNNER = """
const { SSEParser } = await import(process.env.SSE_PARSER_URL);
const { readFileSync } = await import("node:fs");
const streams = JSON.parse(readFileSync(0, "utf8"));
const results = streams.map((reads) => {
  const events = [];
  const parser = new SSEParser((e) => {
    let data;
    try {
      data = JSON.parse(e.data);
    } catch {
      data = { not_json: e.data };
    }
    events.push({ id: e.id, data });
  });
  for (const read of reads) parser.push(Buffer.from(read, "base64"));
  parser.end();
  return events;
});
process.stdout.write(JSON.stringify(results));
"""

NODE = shutil.which("node")

pytestmark = [
    pytest.mark.no_database,
    pytest.mark.skipif(NODE is None, reason="needs node"),
]


def as_bytes(read: str | list[int]) -> bytes:
    return read.encode() if isinstance(read, str) else bytes(read)


def parser_url() -> str:
    # A data: URL is an ES module whatever package.json says, on any node version.
    source = base64.b64encode(PARSER.read_bytes()).decode()
    return f"data:text/javascript;base64,{source}"


def parse_with_node(streams: list[list[bytes]]) -> list[list[dict[str, Any]]]:
    payload = [[base64.b64encode(read).decode() for read in reads] for reads in streams]
    result = subprocess.run(
        [NODE or "node", "--input-type=module", "-e", RUNNER],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        env={"SSE_PARSER_URL": parser_url()},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def parsed_vectors() -> dict[str, list[dict[str, Any]]]:
    streams = [[as_bytes(read) for read in case["reads"]] for case in VECTORS]
    results = parse_with_node(streams)
    return {case["name"]: events for case, events in zip(VECTORS, results, strict=True)}


def test_it_has_uniquely_named_vectors() -> None:
    names = [case["name"] for case in VECTORS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", VECTORS, ids=[case["name"] for case in VECTORS])
def test_it_parses_the_shared_vectors(
    case: dict[str, Any], parsed_vectors: dict[str, list[dict[str, Any]]]
) -> None:
    assert parsed_vectors[case["name"]] == case["events"]


def encoded_reply() -> tuple[bytes, list[dict[str, Any]]]:
    """A reply framed by chat/frames.py, and the events it must parse back to."""
    texts = [
        "Hello",
        " wörld",
        " 👍🏽 中文",
        "\nline\r\nbreaks\r",
        " \u2028sep\u2029 \u0085",
        " NUL\x00 and \x1b escape",
        ' "quotes" \\ backslash',
        "é" * 300,
        "",
    ]
    citation = frames.Annotation(
        kind="url_citation", text="【4:0†source】", url="https://e"
    )
    reply = reply_frames(texts, citation, agent="Agent «Ω»")
    body = b"".join(
        frames.encode(seq, f) + frames.KEEPALIVE for seq, f in enumerate(reply)
    )
    return body, events_of(reply)


def test_it_reads_back_what_the_python_encoder_writes() -> None:
    body, events = encoded_reply()
    rng = random.Random(20260101)
    streams = [
        [body],
        [body[i : i + 1] for i in range(len(body))],
    ]
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(body)), rng.randint(1, 40)))
        streams.append(
            [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        )
    # Every two-piece split of the first frames, so each byte boundary is covered.
    for cut in range(1, 400):
        streams.append([body[:cut], body[cut:]])
    for result in parse_with_node(streams):
        assert result == events
