"""A new conversation's first word comes sooner: one upstream request creates the
thread with the message and streams its run, and the reply is relayed while the
turn is being stored; on one replica (no Redis) it is sent then too, and what
reads conversations waits for the turn. When storing fails, the reply ends with
a `not_saved` error and the thread that request made goes again, with its run:
nothing is left behind upstream."""

import asyncio
import functools
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
import pytest
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.db import connection, connections
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import relay, store
from chat.models import Conversation, Message, Owner
from emulator import AgentsEmulator
from testing.live import database_url_for_subprocess
from testing.redisdb import scratch_redis
from testing.sse import chat, data_frames, parse_sse, reply_of
from testing.waiting import await_until

REDIS_DB = 8  # this module's own database

pytestmark = pytest.mark.django_db(transaction=True)


def api_requests(emulator: AgentsEmulator) -> list[str]:
    """The requests a reply made (the backend reads the agent's name once)."""
    return [
        f"{r.method} {r.path.split('/emulator/', 1)[1]}"
        for r in emulator.requests
        if r.operation not in (None, "agents.get")
    ]


async def test_a_new_conversation_costs_one_request_and_a_follow_up_one_more(
    azure: AgentsEmulator,
) -> None:
    client = AsyncClient()
    first = await reply_of(client, "hi")
    assert first[-1]["type"] == "done"
    assert api_requests(azure) == ["POST threads/runs"]
    thread_id = first[0]["thread_id"]
    assert azure.threads[thread_id].messages[0].text == "hi"

    second = await reply_of(
        client, "again", conversation_id=first[0]["conversation_id"]
    )
    assert second[-1]["type"] == "done"
    assert second[0]["thread_id"] == thread_id
    assert api_requests(azure) == [
        "POST threads/runs",
        f"POST threads/{thread_id}/runs",
    ]


async def test_each_reply_request_carries_a_client_request_id_of_its_own(
    azure: AgentsEmulator,
) -> None:
    """The `x-ms-client-request-id` that the service logs with the request (a
    support case names it) is a fresh UUID per request."""
    client = AsyncClient()
    first = await reply_of(client, "hi")
    await reply_of(client, "again", conversation_id=first[0]["conversation_id"])
    await reply_of(client, "another")
    ids = [
        r.headers.get("x-ms-client-request-id")
        for r in azure.requests
        if r.operation == "runs.create"
    ]
    assert len(ids) == 3
    assert len({uuid.UUID(i) for i in ids}) == 3


def test_a_new_conversations_turn_is_one_statement_on_postgresql() -> None:
    """On PostgreSQL the conversation and its first message are inserted by one
    statement (its own transaction): every field as `save()` stores it, and a
    retry after a lost answer (`again`) finds them instead of storing twice."""
    if connection.vendor != "postgresql":
        pytest.skip("data-modifying WITH queries are PostgreSQL's")
    start_turn = store.start_turn.__wrapped__  # the step, on this thread
    now = timezone.now()
    ids = {
        "user_message_id": uuid.uuid4(),
        "new_conversation_id": uuid.uuid4(),
        "reply_id": uuid.uuid4(),
    }
    turn = functools.partial(
        start_turn,
        owner=Owner(session_key="s" * 32),
        backend="azure_agents",
        message="  What is a turn?  ",
        conversation_id=None,
        thread_id=None,
        with_history=True,
        now=now,
        **ids,
    )
    with CaptureQueriesContext(connection) as queries:
        started = turn()
    assert len(queries) == 1 and queries[0]["sql"].startswith("WITH ")
    assert not connection.in_atomic_block

    conversation = Conversation.objects.get(pk=ids["new_conversation_id"])
    assert (conversation.owner_id, conversation.owner_key) == (None, "s" * 32)
    assert (conversation.title, conversation.backend) == (
        "What is a turn?",
        "azure_agents",
    )
    assert conversation.active_since == now
    assert conversation.active_message_id == ids["reply_id"]
    assert conversation.active_holder and conversation.active_run_id == ""
    assert conversation.created_at is not None and conversation.updated_at is not None
    [question] = Message.objects.filter(conversation=conversation)
    assert question.pk == ids["user_message_id"]
    assert (question.role, question.content) == ("user", "  What is a turn?  ")
    assert question.created_at == question.finished_at == now
    assert (question.status, question.annotations, question.tools) == (
        Message.Status.COMPLETE,
        [],
        [],
    )
    assert started.conversation.pk == conversation.pk
    assert started.user_message.pk == question.pk and started.history == []
    assert not started.conversation._state.adding

    again = turn(again=True)
    assert again.conversation.pk == conversation.pk
    assert again.user_message.pk == question.pk
    assert Conversation.objects.count() == 1 and Message.objects.count() == 1


@pytest.fixture
def messages_refused() -> Iterator[None]:
    """The database refuses every new message, as a full disk or a broken
    constraint would."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION refuse_message() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'no space left'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_message BEFORE INSERT ON chat_message "
                "FOR EACH ROW EXECUTE FUNCTION refuse_message()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER refuse_message BEFORE INSERT ON chat_message "
                "BEGIN SELECT RAISE(ABORT, 'no space left'); END"
            )
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER refuse_message ON chat_message")
            cursor.execute("DROP FUNCTION refuse_message()")
        else:
            cursor.execute("DROP TRIGGER refuse_message")


async def test_a_turn_that_cannot_be_stored_ends_its_reply_and_takes_its_run_away(
    azure: AgentsEmulator, messages_refused: None
) -> None:
    # The run waits before its first word, so only a cancel ends it.
    azure.push(hold_start=True)
    sent = await reply_of(AsyncClient(), "hi")

    assert [f["type"] for f in sent][-1] == "error"
    assert sent[-1]["code"] == "not_saved"
    assert "done" not in [f["type"] for f in sent]
    made = [r for r in azure.requests if r.operation == "runs.create"]
    assert len(made) == 1, "the upstream request went out"
    await await_until(lambda: not azure.threads)
    assert len(azure.cancelled_runs) == 1
    assert await Conversation.objects.acount() == 0
    assert await Message.objects.acount() == 0


async def test_a_finished_reply_keeps_its_frames_for_late_readers_and_nothing_upstream(
    azure: AgentsEmulator,
) -> None:
    """Finished replies are kept for a while (up to MAX_FINISHED), for a retry
    or a reconnect: each keeps its frames, not its upstream request, response
    and tools."""
    sent = await reply_of(AsyncClient(), "hi")
    assert sent[-1]["type"] == "done"
    reply = relay.find(uuid.UUID(sent[0]["conversation_id"]))
    assert reply is not None and reply.log.ended
    assert reply.early is None
    assert reply.request.tools is None and reply.request.history == []
    replayed = b"".join([part async for part in reply.sse(owner=False)])
    again = data_frames(parse_sse(replayed))

    def shape(frames: list[dict]) -> tuple[str, list[dict]]:
        # Chunks that queued up come as one frame: the same text, other splits.
        text = "".join(f["content"] for f in frames if f["type"] == "chunk")
        return text, [f for f in frames if f["type"] != "chunk"]

    assert shape(again) == shape(sent)


@pytest.fixture
def turn_writes_held() -> Iterator[Callable[[], None]]:
    """Holds the database's writes of new conversations until the call it
    gives: SQLite's writer thread waits on an event; on PostgreSQL another
    connection holds the conversations table in EXCLUSIVE mode (reads pass)."""
    if connection.vendor == "postgresql":
        blocker = psycopg.connect(database_url_for_subprocess())
        blocker.execute("LOCK TABLE chat_conversation IN EXCLUSIVE MODE")

        def release() -> None:
            if not blocker.closed:
                blocker.commit()
                blocker.close()

    else:
        held = threading.Event()
        writer = store._sqlite_writer()
        assert writer is not None
        writer.submit(held.wait)
        release = held.set
    try:
        yield release
    finally:
        release()


@pytest.fixture
def turn_waits(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """One item per call of `relay.turns_stored` (a request that waits for the
    turns being stored), appended as the call begins."""
    waits: list[None] = []
    turns_stored = relay.turns_stored

    async def observed(**which: object) -> None:
        waits.append(None)
        await turns_stored(**which)

    monkeypatch.setattr(relay, "turns_stored", observed)
    return waits


async def own_thread[T](request: Awaitable[T]) -> T:
    """`request` with its sync work (the ORM) on a thread of its own, as each
    request's is in the server (chatsite.threads): the test client otherwise
    runs every request's on one thread, here the one the held write holds."""
    async with ThreadSensitiveContext():
        try:
            return await request
        finally:
            await sync_to_async(connections.close_all)()  # the thread's own


async def frames_until_chunk(parts: AsyncIterator[bytes]) -> list[dict]:
    """The data of the frames read from `parts` up to the first chunk."""
    received = b""
    while True:
        received += await anext(parts)
        data = data_frames(parse_sse(received))
        if any(d["type"] == "chunk" for d in data):
            return data


async def last_frame(parts: AsyncIterator[bytes]) -> dict:
    """The data of the last frame of what is left of `parts`."""
    return data_frames(parse_sse(b"".join([part async for part in parts])))[-1]


async def test_on_one_replica_the_first_words_go_out_while_the_turn_is_stored(
    azure: AgentsEmulator,
    turn_writes_held: Callable[[], None],
    turn_waits: list[None],
) -> None:
    """Without Redis a reply's first frames do not wait for its turn's write,
    and a client that reads or answers the conversation on its first frame
    finds it: those requests wait for the turn instead."""
    azure.push(tokens=3, hold_after=1)
    client = AsyncClient()
    await client.get("/")  # the page's session: its conversations are listed
    response = await chat(client, "hi")
    parts = aiter(response.streaming_content)
    first = await frames_until_chunk(parts)
    conversation_id = first[0]["conversation_id"]
    stored = Conversation.objects.filter(pk=conversation_id).aexists
    assert not await own_thread(stored())

    read = asyncio.create_task(
        own_thread(client.get(f"/api/conversations/{conversation_id}"))
    )
    listed = asyncio.create_task(own_thread(client.get("/api/conversations")))
    follow_up = asyncio.create_task(
        own_thread(chat(client, "and?", conversation_id=conversation_id))
    )
    await await_until(lambda: len(turn_waits) == 3)
    assert not (read.done() or listed.done() or follow_up.done())
    turn_writes_held()

    got = await read
    assert got.status_code == 200
    assert [m["content"] for m in got.json()["messages"]] == ["hi"]
    assert [c["id"] for c in (await listed).json()["results"]] == [conversation_id]
    # Found, and busy with its first reply (not "not found").
    assert (await follow_up).status_code == 409
    azure.release()
    assert (await last_frame(parts))["type"] == "done"


async def test_a_sign_in_on_the_first_words_takes_the_new_conversation_along(
    azure: AgentsEmulator,
    turn_writes_held: Callable[[], None],
    turn_waits: list[None],
    django_user_model,
) -> None:
    """The conversations a browser started move to the account it signs in
    to: on one replica that includes one whose turn is still being stored."""
    alice = await own_thread(django_user_model.objects.acreate_user("alice"))
    azure.push(tokens=3, hold_after=1)
    client = AsyncClient()
    await client.get("/")
    response = await chat(client, "hi")
    parts = aiter(response.streaming_content)
    conversation_id = (await frames_until_chunk(parts))[0]["conversation_id"]
    signing_in = asyncio.create_task(own_thread(client.aforce_login(alice)))
    await await_until(lambda: turn_waits)
    assert not signing_in.done()
    turn_writes_held()
    await signing_in
    conversation = await own_thread(Conversation.objects.aget(pk=conversation_id))
    assert (conversation.owner_id, conversation.owner_key) == (alice.pk, "")
    azure.release()
    assert (await last_frame(parts))["type"] == "done"


async def test_with_redis_nothing_goes_out_before_the_turn_is_stored(
    settings, azure: AgentsEmulator, turn_writes_held: Callable[[], None]
) -> None:
    """With Redis the next request may reach another replica: a reply sends
    nothing, not even its metadata, before its conversation is stored."""
    async with scratch_redis(settings, REDIS_DB):
        azure.push(tokens=3, hold_after=2)
        response = await chat(AsyncClient(), "hi")
        parts = aiter(response.streaming_content)
        reading = asyncio.create_task(anext(parts))
        [reply] = [r for r in relay.open_replies()]
        # Produced while the turn waits: its metadata and first words.
        await await_until(lambda: len(reply.log) >= 3)
        for _ in range(100):  # turns of the loop, not time: the reader waits
            await asyncio.sleep(0)
        assert not reading.done()
        stored = Conversation.objects.filter(pk=reply.conversation_id).aexists
        assert not await own_thread(stored())
        turn_writes_held()
        first = parse_sse(await reading)
        assert first[0]["data"]["type"] == "metadata"
        assert await stored()
        azure.release()
        assert (await last_frame(parts))["type"] == "done"


@pytest.fixture
def deferral(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Sets how long, at most, a new conversation's turn waits for its first
    chunk before it is written (`relay.TURN_WRITE_DEFERRAL_SECONDS`)."""
    return functools.partial(monkeypatch.setattr, relay, "TURN_WRITE_DEFERRAL_SECONDS")


async def frames_until_metadata(parts: AsyncIterator[bytes]) -> list[dict]:
    received = b""
    while not data_frames(parse_sse(received)):
        received += await anext(parts)
    return data_frames(parse_sse(received))


def stored(conversation_id: str) -> Awaitable[bool]:
    return own_thread(Conversation.objects.filter(pk=conversation_id).aexists())


async def test_on_one_replica_a_turn_is_written_once_its_first_chunk_is_out(
    azure: AgentsEmulator, deferral: Callable[[float], None]
) -> None:
    """In a burst of new chats the turns' writes would run beside the work
    toward every chat's first chunk: each waits for its own reply's."""
    deferral(3600)
    azure.push(hold_start=True)  # the run waits before its first word
    response = await chat(AsyncClient(), "hi")
    parts = aiter(response.streaming_content)
    [metadata] = await frames_until_metadata(parts)
    conversation_id = metadata["conversation_id"]
    for _ in range(100):  # turns of the loop: the write has not begun
        await asyncio.sleep(0)
    assert not await stored(conversation_id)

    azure.release()
    assert (await last_frame(parts))["type"] == "done"
    conversation = await own_thread(Conversation.objects.aget(pk=conversation_id))
    messages = [m async for m in conversation.messages.order_by("created_at")]
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "hi", Message.Status.COMPLETE),
        ("assistant", messages[-1].content, Message.Status.COMPLETE),
    ]
    assert messages[-1].content


async def test_a_turn_waits_while_another_new_reply_waits_for_its_first_chunk(
    azure: AgentsEmulator, deferral: Callable[[float], None]
) -> None:
    """In a burst, the writes wait until every new reply of the process has
    its first chunk out: a chat whose first word came is written once the
    other's first word comes too."""
    deferral(3600)
    azure.push(hold_start=True)  # the other: held before its first word
    other = aiter((await chat(AsyncClient(), "first")).streaming_content)
    [other_metadata] = await frames_until_metadata(other)
    azure.push(tokens=3, hold_after=1)  # this one: held after its first word
    this = aiter((await chat(AsyncClient(), "second")).streaming_content)
    this_id = (await frames_until_chunk(this))[0]["conversation_id"]
    for _ in range(100):  # turns of the loop: neither write has begun
        await asyncio.sleep(0)
    assert not await stored(this_id)
    assert not await stored(other_metadata["conversation_id"])

    azure.release()
    await await_until(lambda: stored(this_id))
    await await_until(lambda: stored(other_metadata["conversation_id"]))
    assert (await last_frame(this))["type"] == "done"
    assert (await last_frame(other))["type"] == "done"


async def test_a_request_for_the_conversation_begins_its_waiting_turn(
    azure: AgentsEmulator, deferral: Callable[[float], None]
) -> None:
    """A client that reads its conversation on the first frame gets it at
    once, not when the agent's first word comes."""
    deferral(3600)
    azure.push(hold_start=True)
    client = AsyncClient()
    await client.get("/")  # the page's session
    response = await chat(client, "hi")
    parts = aiter(response.streaming_content)
    [metadata] = await frames_until_metadata(parts)
    conversation_id = metadata["conversation_id"]

    got = await own_thread(client.get(f"/api/conversations/{conversation_id}"))
    assert got.status_code == 200
    assert [m["content"] for m in got.json()["messages"]] == ["hi"]
    listed = await own_thread(client.get("/api/conversations"))
    assert [c["id"] for c in listed.json()["results"]] == [conversation_id]
    azure.release()
    assert (await last_frame(parts))["type"] == "done"


async def test_another_owners_request_leaves_a_waiting_turn_alone(
    azure: AgentsEmulator, deferral: Callable[[float], None]
) -> None:
    """Reads wait for the turns of the conversation, or of the owner, they
    read: another browser's list neither waits for this turn nor begins it."""
    deferral(3600)
    azure.push(hold_start=True)
    mine, theirs = AsyncClient(), AsyncClient()
    await mine.get("/")
    await theirs.get("/")
    response = await chat(mine, "hi")
    parts = aiter(response.streaming_content)
    [metadata] = await frames_until_metadata(parts)
    conversation_id = metadata["conversation_id"]

    listed = await own_thread(theirs.get("/api/conversations"))
    assert listed.json()["results"] == []
    missing = await own_thread(theirs.get(f"/api/conversations/{uuid.uuid4()}"))
    assert missing.status_code == 404
    assert not await stored(conversation_id)
    azure.release()
    assert (await last_frame(parts))["type"] == "done"


async def test_a_turn_waits_for_its_first_chunk_no_longer_than_the_deferral(
    azure: AgentsEmulator, deferral: Callable[[float], None]
) -> None:
    """An agent that thinks (or calls tools) long before its first word: its
    user message is stored meanwhile all the same."""
    deferral(0.05)
    azure.push(hold_start=True)
    response = await chat(AsyncClient(), "hi")
    parts = aiter(response.streaming_content)
    [metadata] = await frames_until_metadata(parts)
    await await_until(lambda: stored(metadata["conversation_id"]))
    azure.release()
    assert (await last_frame(parts))["type"] == "done"


async def test_a_reply_that_ends_before_its_first_chunk_stores_its_turn(
    azure: AgentsEmulator, deferral: Callable[[float], None]
) -> None:
    deferral(3600)
    azure.push(fault="run_failed", fault_after=0)
    sent = await reply_of(AsyncClient(), "hi")
    assert sent[-1]["type"] == "error"
    assert "chunk" not in [f["type"] for f in sent]
    conversation = await Conversation.objects.aget(pk=sent[0]["conversation_id"])
    messages = [m async for m in conversation.messages.order_by("created_at")]
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "hi", Message.Status.COMPLETE),
        ("assistant", "", Message.Status.FAILED),
    ]
