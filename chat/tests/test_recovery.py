"""Nothing is left running or locked when a reply ends early: a client that
leaves before the agent's run is named still has that run cancelled."""

import pytest
from django.test import AsyncClient

from chat.models import Message
from emulator import AgentsEmulator
from testing.replies import astored_reply
from testing.sse import chat, read_then_leave
from testing.waiting import await_until

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_run_whose_id_never_arrived_is_cancelled_when_the_client_leaves(
    azure: AgentsEmulator,
) -> None:
    # The run exists upstream, but its first event (with its id) is held back.
    azure.push(hold_start=True)
    response = await chat(AsyncClient(), "hi")
    await read_then_leave(response, lambda body: b'"metadata"' in body)

    await await_until(lambda: azure.cancelled_runs)
    [run_id] = azure.cancelled_runs
    reply = await astored_reply()
    assert reply.status == Message.Status.INTERRUPTED
    assert reply.upstream_run_id == ""
    assert run_id.startswith("run_")
