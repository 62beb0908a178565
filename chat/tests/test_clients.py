"""The chat stream as the clients people use read it, from a real server.

Each client reads POST /api/chat through `SplittingProxy`, which re-splits the
response into random 1-1448-byte reads as a network path does: the earlier
front end's reader, @microsoft/fetch-event-source, eventsource-parser and the
page's static/chat/sse.js (node scripts in testing/clients), httpx-sse,
sseclient-py and `curl -N`. Every reply must reach each of them whole: its text,
one final `done`, no frame twice, no empty message, one upstream run.

Most tests share one server whose keep-alive interval is short, so keep-alives
fall inside every held reply; the two that prove keep-alives harmless at the
default interval (15 s) keep the agent silent until one has reached the client.
"""

import contextlib
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.models import User
from httpx_sse import connect_sse
from sseclient import SSEClient

from chatsite.models import ApiKey
from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer
from testing.proxy import SplittingProxy
from testing.upstream import server_env

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

ServerFactory = Callable[..., LiveServer]

BASE_DIR = Path(__file__).resolve().parents[2]
CLIENTS_DIR = BASE_DIR / "testing" / "clients"
NODE = shutil.which("node")
CURL = shutil.which("curl")
CLIENT_SECONDS = 120

needs_node = pytest.mark.skipif(
    NODE is None or not (CLIENTS_DIR / "node_modules").is_dir(),
    reason="needs node and the node clients (make install-dev runs "
    "npm ci --prefix testing/clients)",
)

# As in production: a reply whose client left goes on, so a retry finds it.
SHORT_KEEPALIVE = {"CHAT_KEEPALIVE_SECONDS": "0.2", "CHAT_ON_DISCONNECT": "continue"}
KEEPALIVE = b": keep-alive"
# Accents, emoji (some beyond the BMP, some joined), CJK, JSON's own escapes, and
# the characters str.splitlines() and iter_lines() break lines at.
REPLY = (
    "Héllo wörld, ça va? 👋🏽 Voilà: naïve café, 日本語のテキスト, “quotes” "
    'and "JSON" \\ escapes\u2028line separator\u2029paragraph\u0085next line\n'
    "a new line\r\n🚀👩‍💻 done."
)
# Long enough that random re-splitting cuts through many multi-byte characters.
LONG_REPLY = " ".join([REPLY] * 30)
HELD_TOKENS = 3


# --- what a client received ----------------------------------------------------


@dataclass
class Received:
    """Events as a client handed them over: (last event id, raw data string)."""

    events: list[tuple[str | None, str]]
    requests: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def data(self) -> list[dict[str, Any]]:
        return [json.loads(data) for _, data in self.events]


def check_whole_reply(received: Received, text: str) -> list[dict[str, Any]]:
    """Asserts `received` is one whole reply whose text is `text`; its data."""
    assert not received.errors, received.errors
    empty = [event for event in received.events if not event[1]]
    assert not empty, f"events with empty data: {empty}"
    ids = [event_id for event_id, _ in received.events if event_id]
    assert len(ids) == len(set(ids)), f"frame ids repeat: {ids}"
    data = received.data()
    types = [d["type"] for d in data]
    assert types.count("metadata") == 1, types
    assert types[-1] == "done", data[-1]
    assert types.count("done") == 1, types
    assert "".join(d["content"] for d in data if d["type"] == "chunk") == text
    assert data[-1]["full_response"] == text
    return data


LINE_END = re.compile(r"\r\n|\r|\n")


def parse_event_stream(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """Events from an event stream's lines, by the WHATWG rules: comments and
    blank lines without data dispatch nothing; the last event id carries on."""
    data: list[str] | None = None
    last_id: str | None = None
    for line in lines:
        if not line:
            if data is not None:
                yield last_id, "\n".join(data)
            data = None
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data = [*(data or []), value]
            elif name == "id" and "\0" not in value:
                last_id = value


def stream_lines(text: str) -> list[str]:
    """The complete lines of an event stream's text (a last unended one is not)."""
    *lines, _unended = LINE_END.split(text)
    return lines


def check_same_reply(
    copy: list[tuple[str | None, dict[str, Any]]],
    original: list[tuple[str | None, dict[str, Any]]],
    *,
    after: int = -1,
) -> None:
    """Asserts another reader's `copy` of a reply is `original` after the frame
    id `after`: its frames but chunks identical, its text the same, its ids
    increasing. (A reader that falls behind gets queued chunks as one frame, so
    chunk frames may be grouped differently.)"""
    ids = [int(event_id or -1) for event_id, _ in copy]
    assert ids == sorted(set(ids)), f"frame ids out of order or repeated: {ids}"
    assert all(event_id > after for event_id in ids), (after, ids)
    rest = [(i, data) for i, data in original if int(i or -1) > after]
    assert [f for f in copy if not is_chunk(f[1])] == [
        f for f in rest if not is_chunk(f[1])
    ]
    assert text_of(copy) == text_of(rest)


def text_of(frames: list[tuple[str | None, dict[str, Any]]]) -> str:
    return "".join(data["content"] for _, data in frames if is_chunk(data))


def same_done(replayed: dict[str, Any], done: dict[str, Any]) -> bool:
    """Whether `replayed` is the `done` of the same reply (its timestamp aside:
    a replay from the database has the time the reply was stored)."""
    return {**replayed, "timestamp": None} == {**done, "timestamp": None}


def runs_created(emulator: EmulatorThread) -> int:
    return sum(r.operation == "runs.create" for r in emulator.requests)


# --- the clients ---------------------------------------------------------------


@dataclass
class ChatRequest:
    url: str
    body: str
    headers: dict[str, str] = field(
        default_factory=lambda: {"Content-Type": "application/json"}
    )


def chat_request(url: str, message: str = "Say hello", **fields: Any) -> ChatRequest:
    return ChatRequest(f"{url}/api/chat", json.dumps({"message": message, **fields}))


def run_node(script: str, request: ChatRequest, **options: Any) -> dict[str, Any]:
    """Runs testing/clients/`script` on `request`; the JSON it prints."""
    spec = {
        "url": request.url,
        "headers": request.headers,
        "body": request.body,
        **options,
    }
    result = subprocess.run(
        [NODE or "node", str(CLIENTS_DIR / script)],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=CLIENT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def node_client(script: str) -> Callable[[ChatRequest], Received]:
    def read(request: ChatRequest) -> Received:
        report = run_node(script, request)
        return Received(
            [(event["id"], event["data"]) for event in report["events"]],
            report["requests"],
            report["errors"],
        )

    return read


def read_with_httpx_sse(request: ChatRequest) -> Received:
    received = Received([])
    with (
        httpx.Client(timeout=CLIENT_SECONDS) as client,
        connect_sse(
            client, "POST", request.url, content=request.body, headers=request.headers
        ) as source,
    ):
        received.requests.append({"status": source.response.status_code})
        for sse in source.iter_sse():
            received.events.append((sse.id, sse.data))
            try:
                sse.json()
            except json.JSONDecodeError as exc:
                received.errors.append(f"sse.json() raised {exc!r} on {sse!r}")
    return received


def read_with_sseclient(request: ChatRequest) -> Received:
    received = Received([])
    with httpx.stream(
        "POST",
        request.url,
        content=request.body,
        headers={**request.headers, "Accept": "text/event-stream"},
        timeout=CLIENT_SECONDS,
    ) as response:
        received.requests.append({"status": response.status_code})
        for event in SSEClient(response.iter_bytes()).events():
            received.events.append((event.id, event.data))
    return received


def read_with_curl(request: ChatRequest) -> Received:
    if CURL is None:
        pytest.skip("needs curl")
    headers = [
        arg
        for name, value in request.headers.items()
        for arg in ("-H", f"{name}: {value}")
    ]
    result = subprocess.run(
        [CURL, "-sSN", "-X", "POST", request.url, *headers, "--data-binary", "@-"],
        input=request.body.encode(),
        capture_output=True,
        timeout=CLIENT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    events = parse_event_stream(stream_lines(result.stdout.decode()))
    return Received(list(events), [{"status": None}])


CLIENTS: dict[str, Callable[[ChatRequest], Received]] = {
    "old front end": node_client("old_reader.mjs"),
    "fetch-event-source": node_client("fetch_event_source.mjs"),
    "eventsource-parser": node_client("eventsource_parser.mjs"),
    "static/chat/sse.js": node_client("sse_js.mjs"),
    "httpx-sse": read_with_httpx_sse,
    "sseclient-py": read_with_sseclient,
    "curl -N": read_with_curl,
}
NODE_CLIENTS = {
    "old front end",
    "fetch-event-source",
    "eventsource-parser",
    "static/chat/sse.js",
}


def client_params() -> list[Any]:
    return [
        pytest.param(name, marks=[needs_node] if name in NODE_CLIENTS else [])
        for name in CLIENTS
    ]


# --- callers -------------------------------------------------------------------


def api_key(username: str) -> str:
    key = ApiKey(user=User.objects.create_user(username), name="clients")
    raw = key.set_new_key()
    key.save()
    return raw


@contextlib.contextmanager
def caller(url: str, kind: str) -> Iterator[httpx.Client]:
    """An HTTP client that is one caller: `anonymous` (no cookies), `api_key`, or
    `session` (an anonymous browser: the page's session and CSRF cookies)."""
    with httpx.Client(base_url=url, timeout=CLIENT_SECONDS) as client:
        if kind == "api_key":
            client.headers["Authorization"] = f"Bearer {api_key(uuid.uuid4().hex)}"
        elif kind == "session":
            assert client.get("/").status_code == 200
            client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
        yield client


class Stream:
    """An open POST /api/chat stream, read frame by frame."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._events = parse_event_stream(response.iter_lines())
        self.frames: list[tuple[str | None, dict[str, Any]]] = []

    def read_until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        for event_id, data in self._events:
            self.frames.append((event_id, json.loads(data)))
            if done(self.frames[-1][1]):
                return
        raise AssertionError(f"the stream ended first: {self.frames}")

    def read_until_text(self, text: str) -> None:
        """Reads up to the chunk that completes `text`, the part of the reply
        written before the agent was held."""
        self.read_until(lambda data: chunks_of(self) == text)

    def read_to_end(self) -> list[tuple[str | None, dict[str, Any]]]:
        for event_id, data in self._events:
            self.frames.append((event_id, json.loads(data)))
        return self.frames

    @property
    def last(self) -> dict[str, Any]:
        return self.frames[-1][1]


@contextlib.contextmanager
def open_stream(
    client: httpx.Client, body: dict[str, Any], **headers: str
) -> Iterator[Stream]:
    with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def say_hi(url: str) -> contextlib.AbstractContextManager[httpx.Response]:
    """Streams the reply to "hi" from the server (or proxy) at `url`."""
    return httpx.stream("POST", f"{url}/api/chat", json={"message": "hi"}, timeout=30)


def is_chunk(data: dict[str, Any]) -> bool:
    return data["type"] == "chunk"


def chunks_of(stream: Stream) -> str:
    return text_of(stream.frames)


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


@pytest.fixture
def emulator(module_emulator: EmulatorThread) -> EmulatorThread:
    module_emulator.reset()
    return module_emulator


@pytest.fixture(scope="module")
def server(
    module_server_factory: ServerFactory, module_emulator: EmulatorThread
) -> LiveServer:
    """One server for the module, keep-alive every 0.2 s, limits off."""
    env = server_env("azure_agents", module_emulator, **SHORT_KEEPALIVE)
    return module_server_factory(env)


@pytest.fixture
def proxy(server: LiveServer) -> Iterator[SplittingProxy]:
    with SplittingProxy(server.url, seed=12) as proxy:
        yield proxy


def held_until_keepalive(
    emulator: EmulatorThread, proxy: SplittingProxy, **reply: Any
) -> None:
    """The agent goes silent after a few tokens, until a keep-alive has reached
    the client; then it writes the rest."""
    emulator.configure(hold_after=HELD_TOKENS, **reply)
    proxy.when_forwarded(KEEPALIVE, emulator.release)


# --- every client, through the re-splitting proxy ------------------------------


@pytest.mark.parametrize("client", client_params())
def test_it_reaches_each_client_whole_through_a_resplitting_network(
    client: str, emulator: EmulatorThread, proxy: SplittingProxy
) -> None:
    held_until_keepalive(emulator, proxy, reply=LONG_REPLY)
    received = CLIENTS[client](chat_request(proxy.url))
    check_whole_reply(received, LONG_REPLY)
    assert len(received.requests) == 1
    assert runs_created(emulator) == 1
    (connection,) = proxy.connections
    assert KEEPALIVE in connection.response, "no keep-alive inside the reply"
    assert connection.writes > 1


# --- 1. keep-alives dispatch nothing -------------------------------------------


@pytest.fixture
def default_keepalive_server(
    uvicorn_server_factory: ServerFactory, module_emulator: EmulatorThread
) -> LiveServer:
    return uvicorn_server_factory(server_env("azure_agents", module_emulator))


@needs_node
def test_fetch_event_source_posts_once_through_a_silent_agent_at_the_default_interval(
    default_keepalive_server: LiveServer, emulator: EmulatorThread
) -> None:
    with SplittingProxy(default_keepalive_server.url, seed=1) as proxy:
        held_until_keepalive(emulator, proxy)
        received = CLIENTS["fetch-event-source"](chat_request(proxy.url))
        assert KEEPALIVE in proxy.connections[0].response
    check_whole_reply(received, "You said: Say hello")
    assert len(received.requests) == 1
    assert runs_created(emulator) == 1


def test_httpx_sse_json_never_raises_through_a_silent_agent_at_the_default_interval(
    default_keepalive_server: LiveServer, emulator: EmulatorThread
) -> None:
    with SplittingProxy(default_keepalive_server.url, seed=2) as proxy:
        held_until_keepalive(emulator, proxy)
        received = read_with_httpx_sse(chat_request(proxy.url))
        assert KEEPALIVE in proxy.connections[0].response
    check_whole_reply(received, "You said: Say hello")
    assert runs_created(emulator) == 1


# --- 2. a retried POST does not send the message twice -------------------------


@needs_node
def test_fetch_event_source_retry_after_a_cut_attaches_to_the_same_run(
    emulator: EmulatorThread, proxy: SplittingProxy
) -> None:
    # Over 2 KB of text before the agent holds, however the server groups it
    # into frames: the cut at 1,200 bytes falls inside the reply, before its
    # end exists. (Paced, the first tokens tend to come as frames of their own.)
    tokens = [f"{'' if i == 0 else ' '}{i:02d}{'x' * 60}" for i in range(60)]
    emulator.configure(reply=tokens, hold_after=40, token_interval=0.005)
    proxy.cut_next(1200)
    # The retry's response headers are out: the rest of the reply may come.
    proxy.when_forwarded(b"\r\n\r\n", emulator.release, connection=1)
    key = str(uuid.uuid4())
    request = chat_request(proxy.url, "Count")
    request.headers["Idempotency-Key"] = key
    report = run_node("fetch_event_source.mjs", request)

    assert proxy.connections[0].cut
    _cut, retry = report["requests"]
    assert retry["headers"]["Idempotency-Key"] == key
    assert retry["headers"].get("last-event-id"), retry["headers"]
    assert runs_created(emulator) == 1
    assert len(report["errors"]) == 1, report["errors"]  # the cut, then the retry
    received = Received([(e["id"], e["data"]) for e in report["events"]])
    check_whole_reply(received, "".join(tokens))


@pytest.mark.parametrize("kind", ["anonymous", "api_key", "session"])
def test_a_second_post_with_the_same_idempotency_key_attaches_to_the_reply(
    server: LiveServer, emulator: EmulatorThread, kind: str
) -> None:
    emulator.configure(hold_after=2)
    body = {"message": "Say hello"}
    key = {"Idempotency-Key": str(uuid.uuid4())}
    held = "You said:"
    with (
        caller(server.url, kind) as client,
        open_stream(client, body, **key) as first,
        open_stream(client, body, **key) as again,
    ):
        first.read_until_text(held)
        metadata_id = first.frames[0][0]
        assert metadata_id is not None
        with open_stream(
            client, body, **key, **{"Last-Event-ID": metadata_id}
        ) as resumed:
            # Attached while in flight: the same reply, from the start or after
            # the Last-Event-ID sent.
            again.read_until_text(held)
            resumed.read_until_text(held)
            emulator.release()
            whole = first.read_to_end()
            check_same_reply(again.read_to_end(), whole)
            check_same_reply(resumed.read_to_end(), whole, after=int(metadata_id))
        done = whole[-1][1]
        assert done["type"] == "done"
        assert done["full_response"] == "You said: Say hello"

        # Once finished, the same POST gets the finished reply.
        with open_stream(client, body, **key) as finished:
            assert same_done(finished.read_to_end()[-1][1], done)

        reused = client.post("/api/chat", json={"message": "Other"}, headers=key)
        assert reused.status_code == 409, reused.text
        assert reused.json()["code"] == "idempotency_key_reused"
    assert runs_created(emulator) == 1


# --- 3. encoding: ASCII on the wire, nothing that splits a line ----------------


def test_the_wire_is_ascii_and_splitlines_reads_the_exact_text(
    server: LiveServer, emulator: EmulatorThread
) -> None:
    emulator.configure(reply=REPLY)
    with say_hi(server.url) as response:
        body = response.read()
    assert body.isascii(), [c for c in body.decode() if not c.isascii()][:10]
    for raw in ("\u2028", "\u2029", "\u0085"):
        assert raw.encode() not in body
    lines = body.decode().splitlines()
    events = parse_event_stream([*lines, ""])
    check_whole_reply(Received(list(events)), REPLY)


def test_iter_lines_reads_the_exact_text(
    server: LiveServer, emulator: EmulatorThread
) -> None:
    emulator.configure(reply=REPLY)
    with say_hi(server.url) as response:
        events = list(parse_event_stream(response.iter_lines()))
    check_whole_reply(Received(events), REPLY)


def test_a_reader_decoding_each_read_on_its_own_reads_the_exact_text(
    emulator: EmulatorThread, proxy: SplittingProxy
) -> None:
    emulator.configure(reply=LONG_REPLY)
    data: list[dict[str, Any]] = []
    buffer = ""
    with say_hi(proxy.url) as response:
        for read in response.iter_raw():
            buffer += read.decode("utf-8", errors="replace")
            *lines, buffer = buffer.split("\n")
            data += [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
    assert proxy.connections[0].writes > 10
    assert "".join(d["content"] for d in data if d["type"] == "chunk") == LONG_REPLY
    assert data[-1]["type"] == "done"
    assert data[-1]["full_response"] == LONG_REPLY


# --- 4. error frames keep the earlier `error` field ----------------------------


@pytest.mark.parametrize(
    "client",
    [pytest.param("old front end", marks=needs_node), "httpx-sse"],
)
def test_error_frames_carry_the_message_as_error(
    client: str, emulator: EmulatorThread, proxy: SplittingProxy
) -> None:
    emulator.push(fault="run_failed")
    received = CLIENTS[client](chat_request(proxy.url))
    last = received.data()[-1]
    assert last["type"] == "error"
    assert last["code"] == "run_failed"
    assert last["message"]
    assert last["error"] == last["message"]


# --- 5. the conversation id works as thread_id ---------------------------------


@needs_node
def test_the_old_front_end_continues_with_the_conversation_id_as_thread_id(
    emulator: EmulatorThread, proxy: SplittingProxy
) -> None:
    first = run_node("old_reader.mjs", chat_request(proxy.url, "One"))
    conversation_id = first["conversationId"]
    assert conversation_id, first
    again = chat_request(proxy.url, "Two", thread_id=conversation_id)
    second = run_node("old_reader.mjs", again)
    assert second["requests"][0]["status"] == 200, second
    assert not second["errors"], second["errors"]
    assert second["conversationId"] == conversation_id
    assert second["accumulatedContent"] == "You said: Two"


def test_a_conversation_id_as_thread_id_is_still_only_its_owners(
    server: LiveServer, emulator: EmulatorThread
) -> None:
    with (
        caller(server.url, "session") as owner,
        caller(server.url, "session") as other,
        caller(server.url, "anonymous") as cookieless,
    ):
        with open_stream(owner, {"message": "One"}) as first:
            conversation_id = first.read_to_end()[0][1]["conversation_id"]
        body = {"message": "Two", "thread_id": conversation_id}
        with open_stream(owner, body) as second:
            frames = second.read_to_end()
        assert frames[0][1]["conversation_id"] == conversation_id
        assert frames[-1][1]["type"] == "done"
        for stranger in (other, cookieless):
            refused = stranger.post("/api/chat", json=body)
            assert refused.status_code == 404, refused.text
            assert refused.json()["code"] == "not_found"


# --- 6. generic Accept headers get the stream ----------------------------------


@pytest.mark.parametrize(
    ("accept", "fields", "expected"),
    [
        ("application/json, text/plain, */*", {}, "text/event-stream"),
        ("*/*", {}, "text/event-stream"),
        ("application/json", {}, "application/json"),
        ("application/json, text/plain, */*", {"stream": False}, "application/json"),
    ],
)
def test_only_a_json_only_request_gets_the_json_body(
    server: LiveServer,
    emulator: EmulatorThread,
    accept: str,
    fields: dict[str, Any],
    expected: str,
) -> None:
    response = httpx.post(
        f"{server.url}/api/chat",
        json={"message": "Say hello", **fields},
        headers={"Accept": accept},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(expected)
    if expected == "text/event-stream":
        events = list(parse_event_stream(stream_lines(response.text)))
        check_whole_reply(Received(events), "You said: Say hello")


# --- 7. a JSON body sent as text/plain -----------------------------------------


@needs_node
def test_fetch_with_a_string_body_and_no_headers_gets_the_stream(
    emulator: EmulatorThread, proxy: SplittingProxy
) -> None:
    request = chat_request(proxy.url)
    request.headers = {}
    received = CLIENTS["old front end"](request)
    assert (
        b"content-type: text/plain;charset=utf-8"
        in bytes(proxy.connections[0].request).lower()
    )
    check_whole_reply(received, "You said: Say hello")


def test_a_json_body_as_text_plain_is_read_and_csrf_still_applies(
    server: LiveServer, emulator: EmulatorThread
) -> None:
    plain = {"Content-Type": "text/plain;charset=UTF-8"}
    body = json.dumps({"message": "Say hello"})
    with caller(server.url, "anonymous") as client:
        response = client.post("/api/chat", content=body, headers=plain)
        assert response.status_code == 200, response.text
        events = list(parse_event_stream(stream_lines(response.text)))
        check_whole_reply(Received(events), "You said: Say hello")
    with caller(server.url, "session") as browser:
        del browser.headers["X-CSRFToken"]
        refused = browser.post("/api/chat", content=body, headers=plain)
        assert refused.status_code == 403, refused.text
        assert refused.json()["code"] == "csrf"


# --- 8. unknown API paths answer JSON ------------------------------------------


@pytest.mark.parametrize("debug", ["0", "1"])
def test_unknown_api_paths_answer_json_404(
    uvicorn_server_factory: ServerFactory, debug: str
) -> None:
    server = uvicorn_server_factory({"DJANGO_DEBUG": debug})
    for method, path in [
        ("GET", "/api/nothing-here"),
        ("POST", "/api/nothing-here"),
        ("GET", "/api/chat/not-a-conversation/stop"),
        ("DELETE", "/api/conversations/not-a-uuid"),
        ("GET", "/api/"),
    ]:
        response = httpx.request(method, f"{server.url}{path}", timeout=30)
        assert response.status_code == 404, (method, path, response.text[:200])
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["code"] == "not_found", body
        assert body["error"], body


# --- 9. concurrent streams: per session, with a per-IP ceiling -----------------


def statuses_streaming_at_once(
    emulator: EmulatorThread, clients: list[httpx.Client]
) -> list[int]:
    """Each client POSTs a message in turn while the earlier replies are held
    after their first chunk; the status each got. Every 429 is the API's
    rate_limited error; every stream is then read to its end."""
    emulator.configure(hold_after=1)
    statuses = []
    with contextlib.ExitStack() as responses:
        streams = []
        for client in clients:
            response = responses.enter_context(
                client.stream("POST", "/api/chat", json={"message": "Say hello"})
            )
            statuses.append(response.status_code)
            if response.status_code == 200:
                streams.append(Stream(response))
                streams[-1].read_until(is_chunk)  # its slot is taken by now
                continue
            response.read()
            assert response.status_code == 429, response.text
            assert response.json()["code"] == "rate_limited"
            assert response.headers["Retry-After"]
        emulator.release()
        for stream in streams:
            stream.read_to_end()
            assert stream.last["type"] == "done"
    return statuses


ONE_EACH = {"CHAT_MAX_CONCURRENT_STREAMS": "1"}
THREE_EACH = {"CHAT_MAX_CONCURRENT_STREAMS": "3"}
THREE_EACH_FIVE_AN_ADDRESS = {**THREE_EACH, "CHAT_MAX_CONCURRENT_STREAMS_PER_IP": "5"}


@pytest.mark.parametrize(
    ("kind", "count", "limits", "expected"),
    [
        # Anonymous browser sessions each get their own stream limit,
        ("session", 4, THREE_EACH, [200] * 4),
        # cookieless callers are still limited per address,
        ("anonymous", 4, THREE_EACH, [200, 200, 200, 429]),
        # sessions share a per-address ceiling,
        ("session", 6, THREE_EACH_FIVE_AN_ADDRESS, [200] * 5 + [429]),
        # by default ten times the per-caller limit.
        ("session", 11, ONE_EACH, [200] * 10 + [429]),
    ],
)
def test_streams_are_limited_per_caller_and_per_address(
    uvicorn_server_factory: ServerFactory,
    emulator: EmulatorThread,
    kind: str,
    count: int,
    limits: dict[str, str],
    expected: list[int],
) -> None:
    server = uvicorn_server_factory(server_env("azure_agents", emulator, **limits))
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(caller(server.url, kind)) for _ in range(count)]
        assert statuses_streaming_at_once(emulator, clients) == expected
