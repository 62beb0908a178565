"""GET /api/conversations/<id>/files/<file_id>: the files a code interpreter made
(a classic run's image_file, a response's container file), served to the
conversation's owner only, from the agent service through the real SDKs against
the emulator; and what a stored reply keeps of its tools and files."""

import pytest
from django.test import AsyncClient
from pytest_django.fixtures import Settings

from chat import files
from emulator import AgentsEmulator
from emulator.stream import CONTAINER_IMAGE_ID, IMAGE_FILE_ID, IMAGE_PNG
from testing.sse import chat, data_frames, read_stream, reply_of
from testing.upstream import answer_through

pytestmark = pytest.mark.django_db(transaction=True)

MADE = {"azure_agents": IMAGE_FILE_ID, "foundry": CONTAINER_IMAGE_ID}


@pytest.fixture(params=["azure_agents", "foundry"])
def agent(
    request: pytest.FixtureRequest, settings: Settings, emulator: AgentsEmulator
) -> str:
    answer_through(settings, request.param, emulator)
    emulator.configure(image=True, tools=["code_interpreter"])
    # Finished replies are read from the database, not kept in memory.
    settings.CHAT_REPLAY_TTL_SECONDS = 0
    return request.param


async def browser() -> AsyncClient:
    """An anonymous browser, with the session the page gives it."""
    client = AsyncClient()
    assert (await client.get("/")).status_code == 200
    return client


async def test_it_serves_a_made_image_to_the_conversations_owner(agent: str) -> None:
    client = await browser()
    data = await reply_of(client)
    (file,) = [d for d in data if d["type"] == "file"]
    conversation_id = data[0]["conversation_id"]
    url = f"/api/conversations/{conversation_id}/files/{MADE[agent]}"
    assert file == {"type": "file", "file_id": MADE[agent], "kind": "image"} | (
        {"name": "chart.png"} if agent == "foundry" else {}
    ) | {"url": url}
    assert data[-1]["type"] == "done"
    response = await client.get(url)
    assert response.status_code == 200
    assert b"".join([part async for part in response.streaming_content]) == IMAGE_PNG
    assert response["Content-Type"] == "image/png"
    assert response["Cache-Control"] == "private, max-age=86400, immutable"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Content-Disposition"].startswith("inline")
    # Another browser, a file no reply made, a conversation that is not there.
    other = await browser()
    assert (await other.get(url)).status_code == 404
    missing = await client.get(f"/api/conversations/{conversation_id}/files/f-1")
    assert (missing.status_code, missing.json()["error"]) == (404, "file not found")
    gone = url.replace(conversation_id[:8], "00000000")
    assert (await client.get(gone)).status_code == 404


async def test_a_stored_reply_keeps_its_tools_and_files(agent: str) -> None:
    client = await browser()
    live = await reply_of(client)
    conversation_id = live[0]["conversation_id"]
    body = (await client.get(f"/api/conversations/{conversation_id}")).json()
    reply = body["messages"][-1]
    tools = [d for d in live if d["type"] == "tool"]
    assert [t["status"] for t in tools] == ["in_progress", "completed"]
    assert reply["tools"] == [{k: v for k, v in tools[-1].items() if k != "type"}]
    (file,) = [d for d in live if d["type"] == "file"]
    assert reply["files"] == [file]
    replay = data_frames(
        await read_stream(
            await client.get(f"/api/conversations/{conversation_id}/stream")
        )
    )
    assert [d for d in replay if d["type"] in ("tool", "file")] == [tools[-1], file]
    # A client that takes JSON rather than a stream gets them too.
    whole = await chat(client, "again", conversation_id=conversation_id, stream=False)
    assert [t["status"] for t in whole.json()["tools"]] == ["completed"]
    assert [f["kind"] for f in whole.json()["files"]] == ["image"]


async def test_it_refuses_a_file_over_the_limit(
    agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_FILE_BYTES", len(IMAGE_PNG) - 1)
    client = await browser()
    data = await reply_of(client)
    (file,) = [d for d in data if d["type"] == "file"]
    response = await client.get(file["url"])
    assert (response.status_code, response.json()["code"]) == (502, "file_too_large")
