"""Every upstream fault through the real SDK, the real server and a real client.

One uvicorn subprocess (and one emulator) serves the whole module. After each case
the test checks, from outside the process, that nothing outlived the reply: the
server's asyncio tasks, open replies and threads (its SIGUSR1 count line), its TCP
connections to the emulator, and its database connections (sockets to PostgreSQL
and their state, or open files on the SQLite database).
"""

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from chat.models import Conversation, Message
from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer
from testing.procfs import established_tcp, open_paths
from testing.replies import stored_reply
from testing.sse import chunks_text, iter_data, read_until_text
from testing.upstream import server_env, token_text
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

ServerFactory = Callable[..., LiveServer]

UPSTREAM_TIMEOUT = 1.0
# Two shared sync threads: the thread count settles after two requests.
SERVER_ENV = {
    "CHAT_UPSTREAM_TIMEOUT_SECONDS": str(UPSTREAM_TIMEOUT),
    "CHAT_KEEPALIVE_SECONDS": "0.25",
    "DJANGO_SYNC_THREADS": "2",
}
# A reply far longer than any test reads, held after three tokens: it stays
# unfinished, with a known text sent, until the test's client stops or leaves it.
LONG_REPLY = {"tokens": 300, "hold_after": 3}
HELD = token_text(3)
# At most a stream and a cancel call at once per case: a pool of two idle
# connections is reuse; more would be connections nobody closed.
MAX_IDLE_UPSTREAM = 2


# --- looking at the server process from outside -------------------------------


def established_ports(pid: int, remote_port: int) -> list[int]:
    """Local ports of the process's established TCP connections to `remote_port`."""
    return [local for local, remote in established_tcp(pid) if remote == remote_port]


@dataclass
class Snapshot:
    asyncio_tasks: int
    open_replies: int
    threads: int
    upstream_connections: int
    db_connections: int
    db_busy: list[str]


class Probe:
    """Counts what a server process holds, from outside it."""

    def __init__(self, server: LiveServer, emulator: EmulatorThread) -> None:
        self.server = server
        self.emulator = emulator
        self.pid = server.process.pid
        self.baseline: Snapshot | None = None

    def runtime_counts(self) -> dict[str, int]:
        """Asks the server for its count line (SIGUSR1) and reads it from the log."""
        before = self.server.log().count('"runtime counts"')
        self.server.process.send_signal(signal.SIGUSR1)
        wait_until(lambda: self.server.log().count('"runtime counts"') > before)
        line = [
            line
            for line in self.server.log().splitlines()
            if '"runtime counts"' in line
        ][-1]
        return json.loads(line)

    def db_connections(self) -> tuple[int, list[str]]:
        """The server's open database connections, and those not idle."""
        settings = connection.settings_dict
        if connection.vendor == "sqlite":
            path = str(Path(settings["NAME"]).resolve())
            return open_paths(self.pid).count(path), []
        ports = established_ports(self.pid, int(settings["PORT"] or 5432))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(state, '') FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND client_port = ANY(%s)",
                [ports],
            )
            states = [row[0] for row in cursor.fetchall()]
        return len(ports), [state for state in states if state != "idle"]

    def snapshot(self) -> Snapshot:
        counts = self.runtime_counts()
        db_count, db_busy = self.db_connections()
        return Snapshot(
            asyncio_tasks=counts["asyncio_tasks"],
            open_replies=counts["open_replies"],
            threads=counts["threads"],
            upstream_connections=len(established_ports(self.pid, self.emulator.port)),
            db_connections=db_count,
            db_busy=db_busy,
        )

    def is_settled(self, snap: Snapshot) -> bool:
        base = self.baseline
        assert base is not None
        return (
            snap.asyncio_tasks <= base.asyncio_tasks
            and snap.open_replies == 0
            and snap.threads <= base.threads
            and snap.upstream_connections <= MAX_IDLE_UPSTREAM
            and snap.db_connections <= base.db_connections
            and not snap.db_busy
        )

    def assert_nothing_left(self) -> None:
        snaps = [self.snapshot()]

        def settled() -> bool:
            if not self.is_settled(snaps[-1]):
                snaps.append(self.snapshot())
            return self.is_settled(snaps[-1])

        try:
            wait_until(settled, interval=0.1)
        except AssertionError:
            pytest.fail(f"left behind: {snaps[-1]} (baseline {self.baseline})")
        assert "Traceback" not in self.server.log()


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def server(
    module_server_factory: ServerFactory, emulator: EmulatorThread
) -> Iterator[LiveServer]:
    """One server for the module, stopped here to check how it went."""
    server = module_server_factory(server_env("azure_agents", emulator, **SERVER_ENV))
    yield server
    assert server.stop() in (0, -signal.SIGTERM)
    log = server.log()
    for problem in ("Traceback", "Task was destroyed", "Unclosed", "did not finish"):
        assert problem not in log, log


@pytest.fixture(scope="module")
def warm_probe(
    server: LiveServer, emulator: EmulatorThread, django_db_blocker: Any
) -> Probe:
    """A probe whose baseline is taken once the server has served a few replies."""
    probe = Probe(server, emulator)
    for _ in range(3):
        assert frames_of(post(server, "warm up"))[-1]["type"] == "done"
    with django_db_blocker.unblock():
        probe.baseline = probe.snapshot()
    return probe


@pytest.fixture
def probe(warm_probe: Probe, emulator: EmulatorThread) -> Iterator[Probe]:
    emulator.reset()
    yield warm_probe
    # transactional_db empties the tables after this; the server must be idle.
    warm_probe.assert_nothing_left()


# --- helpers ------------------------------------------------------------------


def open_chat(
    server: LiveServer, message: str, **fields: Any
) -> contextlib.AbstractContextManager[httpx.Response]:
    """POST /api/chat, streamed: the response, to read as far as a test needs."""
    body = {"message": message, **fields}
    return httpx.stream("POST", f"{server.url}/api/chat", json=body, timeout=15)


def post(server: LiveServer, message: str = "Say hello", **fields: Any) -> list[str]:
    """The reply's lines, read to the end of the stream."""
    with open_chat(server, message, **fields) as response:
        assert response.status_code == 200
        return list(response.iter_lines())


def frames_of(lines: list[str]) -> list[dict[str, Any]]:
    return list(iter_data(lines))


def question_of(reply: Message) -> Message:
    return reply.conversation.messages.get(role="user")


def azure_server(
    factory: ServerFactory, emulator: EmulatorThread, *args: str, **env: str
) -> LiveServer:
    """A server of the test's own, beside the module's, on a reset emulator."""
    emulator.reset()
    return factory(server_env("azure_agents", emulator, **SERVER_ENV, **env), *args)


@pytest.fixture
def one_stream_server(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> LiveServer:
    """A server of the test's own that allows each caller one stream."""
    return azure_server(
        uvicorn_server_factory, emulator, CHAT_MAX_CONCURRENT_STREAMS="1"
    )


def assert_run_cancelled(emulator: EmulatorThread, reply: Message) -> None:
    """The upstream run of `reply`, and no other, is cancelled."""
    wait_until(lambda: emulator.cancelled_runs)
    assert emulator.cancelled_runs == [reply.upstream_run_id]


# --- faults before the reply streams ------------------------------------------

HTTP_FAULTS = [
    ("http_401", "upstream_auth", None),
    ("http_403", "upstream_auth", None),
    # On a new thread a 404 means the agent itself is missing.
    ("http_404", "run_failed", None),
    ("http_429", "rate_limited", None),
    ("http_429_retry_after", "rate_limited", 3),
    ("http_500_json", "upstream_unavailable", None),
    ("http_500_html", "upstream_unavailable", None),
]


@pytest.mark.parametrize(("fault", "code", "retry_after"), HTTP_FAULTS)
def test_it_ends_with_the_documented_error_for_an_http_fault(
    server: LiveServer,
    emulator: EmulatorThread,
    probe: Probe,
    fault: str,
    code: str,
    retry_after: int | None,
) -> None:
    emulator.push(fault=fault, retry_after=retry_after or 1)
    frames = frames_of(post(server))
    assert frames[0]["type"] == "metadata"
    assert [f["type"] for f in frames[1:]] == ["error"]
    error = frames[-1]
    assert error["code"] == code
    assert error.get("retry_after") == retry_after
    assert error["message"] and "Traceback" not in error["message"]
    reply = stored_reply(frames[0]["conversation_id"])
    assert question_of(reply).content == "Say hello"
    assert (reply.status, reply.error_code, reply.content) == ("failed", code, "")
    assert str(reply.id) == error["message_id"]
    # No run was started, so there is nothing to cancel.
    assert emulator.cancelled_runs == []
    assert reply.conversation.active_since is None


def test_it_starts_a_new_thread_when_the_thread_is_gone(
    server: LiveServer, emulator: EmulatorThread, probe: Probe
) -> None:
    first = frames_of(post(server, "one"))
    emulator.push(fault="http_404")
    second = frames_of(post(server, "two", conversation_id=first[0]["conversation_id"]))
    assert second[0]["thread_reset"] is True
    assert second[-1]["type"] == "done"
    assert second[-1]["full_response"] == "You said: two"


# --- faults in the middle of the stream ---------------------------------------


def _assert_partial_failure(
    frames: list[dict[str, Any]], code: str
) -> tuple[Message, str]:
    assert frames[0]["type"] == "metadata"
    assert frames[-1]["type"] == "error"
    assert frames[-1]["code"] == code
    streamed = chunks_text(frames)
    assert streamed, "two deltas arrive before the fault"
    reply = stored_reply(frames[0]["conversation_id"])
    assert question_of(reply).content == "Say hello"
    assert (reply.status, reply.error_code) == ("failed", code)
    assert reply.content == streamed
    assert reply.upstream_run_id.startswith("run_")
    assert reply.conversation.active_since is None
    return reply, frames[0]["conversation_id"]


@pytest.mark.parametrize(
    ("fault", "code", "run_goes_on"),
    [
        ("run_failed", "run_failed", False),
        ("error_event", "upstream_unavailable", False),
        ("disconnect", "upstream_disconnected", True),
        ("incomplete", "incomplete", True),
    ],
)
def test_it_keeps_the_partial_reply_and_cancels_a_run_that_goes_on(
    server: LiveServer,
    emulator: EmulatorThread,
    probe: Probe,
    fault: str,
    code: str,
    run_goes_on: bool,
) -> None:
    emulator.push(fault=fault, fault_after=2, **LONG_REPLY)
    reply, conversation_id = _assert_partial_failure(frames_of(post(server)), code)
    if not run_goes_on:
        # The run ended upstream: nothing to cancel.
        assert emulator.cancelled_runs == []
        return
    # The run goes on upstream after its stream is cut; until it is cancelled it
    # costs tokens and the thread refuses the user's next message.
    assert_run_cancelled(emulator, reply)
    retry = frames_of(post(server, "again", conversation_id=conversation_id))
    assert retry[-1]["type"] == "done"


def test_it_times_out_a_silent_upstream_and_cancels_its_run(
    server: LiveServer, emulator: EmulatorThread, probe: Probe
) -> None:
    emulator.push(fault="hang", fault_after=1)
    started = time.monotonic()
    frames = frames_of(post(server))
    assert frames[-1]["code"] == "timeout"
    assert time.monotonic() - started >= UPSTREAM_TIMEOUT
    reply = stored_reply(frames[0]["conversation_id"])
    assert (reply.status, reply.error_code) == ("failed", "timeout")
    assert reply.content == chunks_text(frames) == "You"
    assert_run_cancelled(emulator, reply)


def test_it_stores_a_timed_out_reply_and_frees_its_slot_before_the_last_frame(
    one_stream_server: LiveServer, emulator: EmulatorThread
) -> None:
    # With one stream allowed per caller, a slot kept by a timed-out reply would
    # refuse every later message with 429 until the slot expires (16 minutes).
    for _ in range(2):
        emulator.push(fault="hang", fault_after=1)
        frames = frames_of(post(one_stream_server))
        assert frames[-1]["code"] == "timeout"
        reply = stored_reply(frames[0]["conversation_id"])
        assert (reply.status, reply.error_code) == ("failed", "timeout")
    assert frames_of(post(one_stream_server))[-1]["type"] == "done"
    assert "timed out" not in one_stream_server.log()


# --- the client goes away -----------------------------------------------------


def test_it_cancels_the_run_when_the_client_disconnects_mid_stream(
    server: LiveServer, emulator: EmulatorThread, probe: Probe
) -> None:
    # Three times: a connection kept by each would show up as growth.
    for attempt in range(3):
        emulator.push(**LONG_REPLY)
        with open_chat(server, "long") as response:
            stream = iter_data(response.iter_lines())
            frames = read_until_text(stream, HELD)
        conversation_id = frames[0]["conversation_id"]
        reply = stored_reply(conversation_id)
        assert (reply.status, reply.content) == ("interrupted", HELD)
        wait_until(lambda n=attempt: len(emulator.cancelled_runs) > n)
        assert emulator.cancelled_runs[attempt] == reply.upstream_run_id
        assert Conversation.objects.get(pk=conversation_id).active_since is None
        assert probe.snapshot().upstream_connections <= MAX_IDLE_UPSTREAM


def test_it_cancels_the_run_when_the_client_leaves_before_the_first_token(
    server: LiveServer, emulator: EmulatorThread, probe: Probe
) -> None:
    emulator.push(hold_after=0)
    with open_chat(server, "slow") as response:
        stream = iter_data(response.iter_lines())
        metadata = next(stream)
        # Metadata leaves once the run's stream opens; its first event (the run
        # id, needed to cancel it) follows. Leave once the server has it.
        conversation = Conversation.objects.filter(pk=metadata["conversation_id"])
        wait_until(conversation.exclude(active_run_id="").exists)
    reply = stored_reply(metadata["conversation_id"])
    assert (reply.status, reply.content) == ("interrupted", "")
    assert_run_cancelled(emulator, reply)


def test_it_frees_the_stream_slot_when_the_client_leaves_after_stop(
    one_stream_server: LiveServer, emulator: EmulatorThread
) -> None:
    # Stop, then close the tab: the disconnect stops the reply a second time
    # while it cancels its run and stores itself. With one stream allowed per
    # caller, a slot that is never freed refuses every later message with 429.
    for attempt in range(3):
        emulator.push(**LONG_REPLY)
        with open_chat(one_stream_server, "long") as response:
            assert response.status_code == 200, f"attempt {attempt}"
            stream = iter_data(response.iter_lines())
            frames = read_until_text(stream, HELD)
            conversation_id = frames[0]["conversation_id"]
            stop = httpx.post(
                f"{one_stream_server.url}/api/chat/{conversation_id}/stop"
            )
            assert stop.status_code == 200
        reply = stored_reply(conversation_id)
        assert (reply.status, reply.content) == ("cancelled", HELD)
        wait_until(lambda n=attempt: len(emulator.cancelled_runs) > n)
    assert frames_of(post(one_stream_server))[-1]["type"] == "done"


# --- the server stops ---------------------------------------------------------


def test_it_ends_open_replies_cleanly_on_sigterm(
    uvicorn_server_factory: ServerFactory, emulator: EmulatorThread
) -> None:
    server = azure_server(
        uvicorn_server_factory,
        emulator,
        "--timeout-graceful-shutdown",
        "5",
        CHAT_DRAIN_SECONDS="0.3",
    )
    emulator.configure(**LONG_REPLY)
    probe = Probe(server, emulator)
    streams = [open_chat(server, f"m{n}") for n in range(2)]
    replies = [iter_data(stream.__enter__().iter_lines()) for stream in streams]
    try:
        received = [read_until_text(reply, HELD) for reply in replies]
        assert probe.runtime_counts()["open_replies"] == 2
        db_ports = (
            []
            if connection.vendor == "sqlite"
            else established_ports(server.process.pid, 5432)
        )
        server.process.send_signal(signal.SIGTERM)
        rests = [list(reply) for reply in replies]
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
    for frames, rest in zip(received, rests, strict=True):
        assert rest[-1]["type"] == "error"
        assert rest[-1]["code"] == "server_shutdown"
        reply = stored_reply(frames[0]["conversation_id"])
        assert reply.status == "interrupted"
        assert reply.content == chunks_text(frames + rest) == HELD
        assert reply.upstream_run_id in emulator.cancelled_runs
    assert server.process.wait(15) in (0, -signal.SIGTERM)
    assert Conversation.objects.filter(active_since__isnull=False).count() == 0
    log = server.log()
    # The replies ended within the drain: uvicorn had no task left to cancel.
    assert "graceful shutdown exceeded" not in log, log
    for problem in ("Traceback", "Task was destroyed", "Unclosed", "did not finish"):
        assert problem not in log, log
    if db_ports:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)",
                [db_ports],
            )
            assert cursor.fetchone()[0] == 0
