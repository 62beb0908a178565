"""A new conversation's first word comes sooner: one upstream request creates the
thread with the message and streams its run, and the reply is relayed while the
turn is being stored. When storing fails, the reply ends with a `not_saved`
error and the thread that request made goes again, with its run: nothing is
left behind upstream."""

import functools
import uuid
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test import AsyncClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import relay, store
from chat.models import Conversation, Message, Owner
from emulator import AgentsEmulator
from testing.sse import parse_sse, reply_of
from testing.waiting import await_until

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
    again = [f["data"] for f in parse_sse(replayed) if "data" in f]

    def shape(frames: list[dict]) -> tuple[str, list[dict]]:
        # Chunks that queued up come as one frame: the same text, other splits.
        text = "".join(f["content"] for f in frames if f["type"] == "chunk")
        return text, [f for f in frames if f["type"] != "chunk"]

    assert shape(again) == shape(sent)
