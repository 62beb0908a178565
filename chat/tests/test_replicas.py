"""Replies that outlive their connection and their replica, on three replicas
behind nginx sharing PostgreSQL and Redis: a client that drops at any frame
resumes on any replica with no text lost or repeated; a stop sent to another
replica cancels the run upstream within a second; a replica killed mid-reply has
its reply finished (or ended as lost) by another, once; a Redis that goes away
leaves the live stream whole, and one missing at start fails readiness."""

import contextlib
import itertools
import random
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import redis

from chat.backends.local import demo_reply
from chat.replylog import redis_key
from emulator import EmulatorConfig
from emulator.stream import reply_tokens
from testing.cluster import Cluster, require_cluster_services
from testing.upstream import token_text
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.cluster]

REPLICAS = 3
SEED = 14
TRIALS = 100
WORKERS = 8
# A trial drops its first connection, then each resumed one with this chance, up
# to MAX_DROPS times.
DROP_AGAIN = 0.4
MAX_DROPS = 3
# Paces the trials' replies, so that resumes meet them live as well as finished.
TOKEN_INTERVAL = 0.01
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
TOKENS = 12
HELD = 4
# The local agent's pace in the kill test: its reply is still being written
# long after the client has read its first tokens.
LOCAL_DELAY_MS = "300"
STOP_WITHIN = 1.0  # seconds, the requirement
FINAL = frozenset({"done", "error"})


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    data: dict[str, Any]

    @property
    def type(self) -> str:
        return self.data["type"]


def events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of an event stream's `lines` as they arrive, with their ids."""
    data: dict[str, Any] | None = None
    event_id = -1
    for line in lines:
        if line.startswith("data: "):
            data = orjson.loads(line[6:])
        elif line.startswith("id: "):
            event_id = int(line[4:])
        elif not line and data is not None:
            yield Event(event_id, data)
            data, event_id = None, -1


def read_until_text(stream: Iterator[Event], text: str) -> list[Event]:
    """Events from `stream` up to the chunk that completes `text`."""
    read: list[Event] = []
    for event in stream:
        read.append(event)
        received = chunk_text(read)
        if received == text:
            return read
        assert text.startswith(received), (received, text)
    raise AssertionError(f"the stream ended before {text!r}: {read}")


def chunk_text(read: Iterable[Event]) -> str:
    return "".join(e.data["content"] for e in read if e.type == "chunk")


@contextlib.contextmanager
def resume(
    client: httpx.Client,
    base_url: str,
    conversation_id: str,
    last_id: int,
    *,
    query: bool = False,
) -> Iterator[httpx.Response]:
    """The conversation's stream after `last_id` (a Last-Event-ID header, or with
    `query` the parameter), open for reading."""
    url = f"{base_url}/api/conversations/{conversation_id}/stream"
    if query:
        request = client.build_request("GET", url, params={"last_event_id": last_id})
    else:
        request = client.build_request(
            "GET", url, headers={"Last-Event-ID": str(last_id)}
        )
    response = client.send(request, stream=True)
    try:
        assert response.status_code == 200, (response.status_code, response.read())
        yield response
    finally:
        response.close()


def conversation(cluster: Cluster, conversation_id: str) -> dict[str, Any]:
    response = httpx.get(f"{cluster.url}/api/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return response.json()


def mirrored(cluster: Cluster, message_id: str, event_id: int) -> bool:
    """Whether the reply's Redis log holds `event_id`: a frame the client has is
    where a reader on another replica goes on from."""
    with redis.Redis.from_url(cluster.redis_url) as client:
        last = client.xrevrange(redis_key(message_id), count=1)
    return bool(last) and int(last[0][0].split(b"-")[0]) >= event_id


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_cluster_services()
    workdir = tmp_path_factory.mktemp("replicas")
    with Cluster(workdir, replicas=REPLICAS, redis_gates=True) as cluster:
        yield cluster


@pytest.fixture
def cluster(running_cluster: Cluster) -> Cluster:
    """The module's azure_agents cluster with Redis reachable, every replica
    running and a fresh emulator."""
    running_cluster.open_redis()
    running_cluster.heal()
    return running_cluster


# --- a client that drops and resumes --------------------------------------------------


@dataclass
class Trial:
    message: str
    posted_on: int = -1
    resumed_on: list[int] = field(default_factory=list)
    received: list[Event] = field(default_factory=list)
    stored: dict[str, Any] = field(default_factory=dict)
    # What each connection got, for a failure to tell: "after 5 on 1: [6, 7]".
    connections: list[str] = field(default_factory=list)

    def read(self, response: httpx.Response, limit: int, what: str) -> None:
        """Reads the response's next `limit` events (all of them with 0, fewer
        when it ends first); the caller then closes the connection."""
        before = len(self.received)
        for count, event in enumerate(events(response.iter_lines()), 1):
            self.received.append(event)
            if count == limit or event.type in FINAL:
                break
        got = [event.id for event in self.received[before:]]
        self.connections.append(f"{what}: {got}")


def run_trial(cluster: Cluster, number: int) -> Trial:
    """POSTs a message, drops at a random frame, resumes through nginx after the
    last id received (dropping again, maybe) until the final frame."""
    rng = random.Random(SEED * 1000 + number)
    trial = Trial(f"trial {number} " + " ".join(rng.choices(WORDS, k=6)))
    frames = len(reply_tokens(EmulatorConfig(), trial.message)) + 2
    received = trial.received
    with httpx.Client(timeout=30) as client:
        body = {"message": trial.message}
        with client.stream("POST", f"{cluster.url}/api/chat", json=body) as response:
            assert response.status_code == 200, response.read()
            trial.posted_on = cluster.replica_of(response)
            trial.read(
                response, rng.randint(1, frames - 1), f"POST on {trial.posted_on}"
            )
        conversation_id = received[0].data["conversation_id"]
        drops = 1
        for _ in range(MAX_DROPS):
            if received[-1].type in FINAL:
                break
            drop = drops < MAX_DROPS and rng.random() < DROP_AGAIN
            last_id = received[-1].id
            with resume(
                client, cluster.url, conversation_id, last_id, query=rng.random() < 0.5
            ) as response:
                replica = cluster.replica_of(response)
                trial.resumed_on.append(replica)
                left = frames - 1 - last_id
                limit = rng.randint(1, max(1, left - 1)) if drop else 0
                trial.read(response, limit, f"after {last_id} on {replica}")
            drops += drop
        trial.stored = conversation(cluster, conversation_id)
    return trial


def test_it_resumes_a_dropped_stream_on_any_replica_with_nothing_lost_or_repeated(
    cluster: Cluster,
) -> None:
    cluster.emulator.configure(token_interval=TOKEN_INTERVAL)
    with ThreadPoolExecutor(WORKERS) as pool:
        trials = list(pool.map(lambda n: run_trial(cluster, n), range(TRIALS)))

    upstream: dict[str, list[str]] = {}
    for delta in sorted(cluster.emulator.deltas, key=lambda d: d.index):
        upstream.setdefault(delta.thread_id, []).append(delta.text)
    for trial in trials:
        received = trial.received
        metadata, final = received[0], received[-1]
        assert (metadata.id, metadata.type) == (0, "metadata")
        deltas = upstream[metadata.data["thread_id"]]
        text = "".join(deltas)
        assert text == f"You said: {trial.message}"
        ids = [event.id for event in received]
        story = f"{metadata.data['conversation_id']}: {trial.connections}"
        assert ids == sorted(set(ids)), f"an id came twice in {story}"
        # Event id n is the upstream's delta n - 1; a chunk joins those since the
        # frame before it: together, every delta once, in order.
        for before, event in itertools.pairwise(received[:-1]):
            assert event.type == "chunk", story
            joined = "".join(deltas[before.id : event.id])
            assert event.data["content"] == joined, story
        assert (final.type, final.id) == ("done", len(deltas) + 1), story
        assert received[-2].id == len(deltas), story
        assert final.data["status"] == "complete"
        assert final.data["full_response"] == chunk_text(received) == text
        reply = trial.stored["messages"][-1]
        assert (reply["role"], reply["status"]) == ("assistant", "complete")
        assert reply["content"] == text

    resumed_on = {replica for trial in trials for replica in trial.resumed_on}
    assert resumed_on == set(range(cluster.size))
    elsewhere = sum(
        replica != trial.posted_on for trial in trials for replica in trial.resumed_on
    )
    assert elsewhere > 0


# --- stop from another replica --------------------------------------------------------


def test_a_stop_sent_to_another_replica_cancels_the_run_for_every_listener(
    cluster: Cluster,
) -> None:
    cluster.emulator.push(tokens=TOKENS, hold_after=HELD)
    body = {"message": "Stop me elsewhere"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{cluster.url}/api/chat", json=body) as original,
    ):
        assert original.status_code == 200
        producer = cluster.replica_of(original)
        other_url = cluster.replica_urls[(producer + 1) % cluster.size]
        stream = events(original.iter_lines())
        head = read_until_text(stream, token_text(HELD))
        ids = head[0].data
        wait_until(lambda: mirrored(cluster, ids["message_id"], head[-1].id))
        with resume(client, other_url, ids["conversation_id"], head[-1].id) as follower:
            lines = follower.iter_lines()
            assert next(lines) == "retry: 2000"
            asked_at = time.time()
            stop = client.post(f"{other_url}/api/chat/{ids['conversation_id']}/stop")
            assert stop.status_code == 200, stop.text
            assert stop.json()["status"] == "stopping"
            followed = list(events(lines))
        rest = list(stream)

    cancels = [r for r in cluster.emulator.requests if r.operation == "runs.cancel"]
    assert len(cancels) == 1
    assert cancels[0].time - asked_at < STOP_WITHIN
    run_id = cancels[0].path.rstrip("/").split("/")[-2]
    assert cluster.emulator.cancelled_runs == [run_id]
    for after_head in (rest, followed):
        final = after_head[-1]
        assert (final.type, final.data["status"]) == ("done", "cancelled")
        assert final.data["full_response"] == token_text(HELD)
        assert chunk_text(after_head) == ""
        assert final.id == head[-1].id + 1
    reply = conversation(cluster, ids["conversation_id"])["messages"][-1]
    assert (reply["status"], reply["content"]) == ("cancelled", token_text(HELD))


# --- kill -9 of the replica writing the reply -----------------------------------------

RESUMABLE = {"azure_agents", "foundry"}


@pytest.fixture
def backend_cluster(
    request: pytest.FixtureRequest, running_cluster: Cluster, tmp_path: Any
) -> Iterator[Cluster]:
    """The module's cluster for azure_agents; a cluster of its own for another
    backend (`request.param`)."""
    backend = request.param
    if backend == running_cluster.backend:
        running_cluster.open_redis()
        running_cluster.heal()
        yield running_cluster
        return
    env = {"CHAT_LOCAL_DELAY_MS": LOCAL_DELAY_MS} if backend == "local" else {}
    with Cluster(tmp_path, replicas=REPLICAS, backend=backend, env=env) as cluster:
        yield cluster


@dataclass
class Killed:
    """A reply whose replica was killed after the client had read `head`."""

    producer: int
    head: list[Event]

    @property
    def conversation_id(self) -> str:
        return self.head[0].data["conversation_id"]

    @property
    def message_id(self) -> str:
        return self.head[0].data["message_id"]

    @property
    def last_id(self) -> int:
        return self.head[-1].id


def kill_mid_reply(cluster: Cluster, client: httpx.Client, message: str) -> Killed:
    """POSTs `message` through nginx, reads the reply's first HELD tokens (the
    agent holds the rest), kills the replica writing it with SIGKILL once the
    Redis log has what the client read, then lets the agent go on."""
    local = cluster.backend == "local"
    if not local:
        cluster.emulator.push(tokens=TOKENS, hold_after=HELD)
    body = {"message": message}
    with client.stream("POST", f"{cluster.url}/api/chat", json=body) as original:
        assert original.status_code == 200
        stream = events(original.iter_lines())
        if local:
            head = [next(stream) for _ in range(1 + HELD)]
        else:
            head = read_until_text(stream, token_text(HELD))
        killed = Killed(cluster.replica_of(original), head)
        wait_until(lambda: mirrored(cluster, killed.message_id, killed.last_id))
        cluster.kill(killed.producer)
    cluster.emulator.release()
    return killed


@pytest.mark.parametrize(
    "backend_cluster",
    ["azure_agents", "foundry", "openai", "local"],
    indirect=True,
)
def test_a_killed_replicas_reply_is_taken_over_once(backend_cluster: Cluster) -> None:
    cluster = backend_cluster
    message = "Outlive your replica"
    with httpx.Client(timeout=30) as client:
        killed = kill_mid_reply(cluster, client, message)
        # A reader on each survivor: both may find the writer dead.
        with contextlib.ExitStack() as readers:
            resumed = readers.enter_context(
                resume(client, cluster.url, killed.conversation_id, killed.last_id)
            )
            survivors = {*range(cluster.size)} - {killed.producer}
            other_url = cluster.replica_urls[
                (survivors - {cluster.replica_of(resumed)}).pop()
            ]
            other = readers.enter_context(
                resume(client, other_url, killed.conversation_id, killed.last_id)
            )
            rest = list(events(resumed.iter_lines()))
            also = list(events(other.iter_lines()))

        assert chunk_text(rest) == chunk_text(also)
        assert rest[-1] == also[-1]
        resumed_ids = [killed.last_id, *(event.id for event in rest)]
        assert resumed_ids == sorted(set(resumed_ids))
        text = chunk_text(killed.head) + chunk_text(rest)
        stored = conversation(cluster, killed.conversation_id)["messages"]
        replies = [m for m in stored if m["role"] == "assistant"]
        assert len(stored) == 2
        assert [reply["id"] for reply in replies] == [killed.message_id]
        reply, final = replies[0], rest[-1]
        if cluster.backend in RESUMABLE:
            assert text == token_text(TOKENS)
            assert (final.type, final.data["status"]) == ("done", "complete")
            assert final.data["full_response"] == text
            assert (reply["status"], reply["content"]) == ("complete", text)
        else:
            assert (final.type, final.data["code"]) == ("error", "producer_lost")
            assert (reply["status"], reply["error_code"]) == (
                "interrupted",
                "producer_lost",
            )
            assert reply["content"] == text
            local = cluster.backend == "local"
            whole = demo_reply(message) if local else token_text(TOKENS)
            assert whole.startswith(text) and len(text) < len(whole)
        takeovers = f"taking over reply {killed.message_id}"
        assert cluster.replica_logs().count(takeovers) == 1

        # The conversation is free for the next message, which the agent answers.
        body = {"message": "And now?", "conversation_id": killed.conversation_id}
        with client.stream("POST", f"{cluster.url}/api/chat", json=body) as response:
            assert response.status_code == 200, response.read()
            next_reply = events(response.iter_lines())
            assert [next(next_reply).type, next(next_reply).type] == [
                "metadata",
                "chunk",
            ]


def test_a_taken_over_reply_is_listed_after_its_question(cluster: Cluster) -> None:
    with httpx.Client(timeout=30) as client:
        killed = kill_mid_reply(cluster, client, "Which comes first?")
        with resume(
            client, cluster.url, killed.conversation_id, killed.last_id
        ) as resumed:
            assert list(events(resumed.iter_lines()))[-1].type == "done"
    stored = conversation(cluster, killed.conversation_id)["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]


# --- Redis ----------------------------------------------------------------------------


def test_a_live_stream_goes_on_when_redis_goes_away(cluster: Cluster) -> None:
    cluster.emulator.push(tokens=TOKENS, hold_after=HELD)
    body = {"message": "Keep going without Redis"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{cluster.url}/api/chat", json=body) as original,
    ):
        assert original.status_code == 200
        producer = cluster.replica_of(original)
        stream = events(original.iter_lines())
        head = read_until_text(stream, token_text(HELD))
        conversation_id = head[0].data["conversation_id"]
        cluster.shut_redis()
        # Another replica cannot follow the reply now: it says so, as the
        # shared cache's outages are answered.
        other_url = cluster.replica_urls[(producer + 1) % cluster.size]
        stream_url = f"{other_url}/api/conversations/{conversation_id}/stream"
        with client.stream("GET", stream_url) as elsewhere:
            assert elsewhere.status_code == 503
            assert elsewhere.headers["Retry-After"]
            assert orjson.loads(elsewhere.read())["code"] == "unavailable"
        cluster.emulator.release()
        rest = list(stream)
    assert head[-1].id < rest[0].id
    assert chunk_text(head + rest) == token_text(TOKENS)
    final = rest[-1]
    assert (final.type, final.data["status"]) == ("done", "complete")
    wait_until(
        lambda: "resume is degraded" in cluster.replicas[producer].log(), timeout=60
    )
    reply = conversation(cluster, conversation_id)["messages"][-1]
    assert (reply["status"], reply["content"]) == ("complete", token_text(TOKENS))

    with httpx.Client(timeout=30) as client:
        # The replica that wrote it still replays it whole.
        with resume(
            client, cluster.replica_urls[producer], conversation_id, -1
        ) as here:
            assert chunk_text(events(here.iter_lines())) == token_text(TOKENS)
        # Once Redis is back, any other replica replays it too.
        cluster.open_redis()
        with resume(client, other_url, conversation_id, -1) as there:
            replayed = list(events(there.iter_lines()))
        assert chunk_text(replayed) == token_text(TOKENS)
        assert replayed[-1].data["status"] == "complete"


def test_a_resume_ahead_of_the_redis_log_waits_for_it(cluster: Cluster) -> None:
    cluster.emulator.push(tokens=TOKENS, hold_after=HELD)
    body = {"message": "Ahead of the log"}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{cluster.url}/api/chat", json=body) as original,
    ):
        producer = cluster.replica_of(original)
        stream = events(original.iter_lines())
        head = read_until_text(stream, token_text(HELD))
        ids = head[0].data
        wait_until(lambda: mirrored(cluster, ids["message_id"], head[-1].id))
        # The writer's copy to Redis falls behind what its client has read.
        cluster.shut_redis(producer)
        cluster.emulator.release()
        ahead = next(stream)
        other_url = cluster.replica_urls[(producer + 1) % cluster.size]
        with resume(client, other_url, ids["conversation_id"], ahead.id) as follower:
            lines = follower.iter_lines()
            assert next(lines) == "retry: 2000"
            cluster.open_redis(producer)
            followed = list(events(lines))
        rest = list(stream)
    followed_ids = [event.id for event in followed]
    assert followed_ids == sorted(set(followed_ids))
    assert followed_ids[0] > ahead.id
    assert followed[-1] == rest[-1]
    assert chunk_text([*head, ahead, *followed]) == token_text(TOKENS)


def test_a_reply_is_not_taken_from_a_writer_that_lived_through_a_redis_outage(
    cluster: Cluster,
) -> None:
    cluster.emulator.push(tokens=TOKENS, hold_after=HELD)
    body = {"message": "Outlive an outage"}
    with (
        redis.Redis.from_url(cluster.redis_url) as direct,
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{cluster.url}/api/chat", json=body) as original,
    ):
        producer = cluster.replica_of(original)
        stream = events(original.iter_lines())
        head = read_until_text(stream, token_text(HELD))
        ids = head[0].data
        wait_until(lambda: mirrored(cluster, ids["message_id"], head[-1].id))
        cluster.shut_redis()
        # Every process's heartbeat has lapsed, the writer's too, though it lives.
        wait_until(lambda: not direct.keys("*chat:alive:*"))
        cluster.open_redis()
        other_url = cluster.replica_urls[(producer + 1) % cluster.size]
        with resume(client, other_url, ids["conversation_id"], head[-1].id) as follower:
            cluster.emulator.release()
            rest = list(stream)
            followed = list(events(follower.iter_lines()))
    assert cluster.replica_logs().count(f"taking over reply {ids['message_id']}") == 0
    for after_head in (rest, followed):
        assert chunk_text(head + after_head) == token_text(TOKENS)
        assert after_head[-1].type == "done"


def test_readiness_fails_while_redis_is_unreachable_at_start(cluster: Cluster) -> None:
    cluster.shut_redis(0)
    replica = cluster.restart(0)

    ready = httpx.get(f"{replica.url}/api/health/ready", timeout=30)
    assert ready.status_code == 503
    body = ready.json()
    assert body["failed"] == ["cache"]
    assert body["checks"]["database"]["ok"]
    others = cluster.replica_urls[1:]
    assert all(
        httpx.get(f"{url}/api/health/ready").status_code == 200 for url in others
    )

    cluster.open_redis(0)
    wait_until(lambda: httpx.get(f"{replica.url}/api/health/ready").status_code == 200)
