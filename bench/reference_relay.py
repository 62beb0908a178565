"""The earlier chat service's relay, rebuilt as the benchmark's yardstick.

FastAPI + `StreamingResponse` over azure-ai-agents' async `AgentsClient`, written
the way `src/chat-api/main.py` did it: `threads.create`, `messages.create`, then
`runs.stream` with the SDK's default event handler, one `json.dumps` frame per
`MessageDeltaChunk`. It stores nothing (the old service had no database).

Two deliberate differences, both so that only the relay is compared: the SDK gets
an aiohttp session with the same connection limit as chatsite's (the SDK default
caps a process at 100 upstream connections, which would queue every stream past
the 100th), and a bearer-token policy that allows plain http to the loopback
emulator. Configured by REF_ENDPOINT, REF_AGENT_ID, REF_MAX_CONNECTIONS.

    uvicorn reference_relay:app --app-dir bench --loop uvloop --http httptools
"""

import json
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from azure.ai.agents.aio import AgentsClient
from azure.ai.agents.models import AgentStreamEvent, MessageDeltaChunk, ThreadRun
from azure.core.credentials import AccessToken
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
from azure.core.pipeline.transport import AioHttpTransport
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

SCOPE = "https://ai.azure.com/.default"


class DevToken:
    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("dev-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None


class LoopbackBearerPolicy(AsyncBearerTokenCredentialPolicy):
    async def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False
        await super().on_request(request)


class ChatRequest(BaseModel):
    message: str
    thread_id: str | None = None


app = FastAPI()
_client: AgentsClient | None = None


def agents() -> AgentsClient:
    global _client
    if _client is None:
        limit = int(os.environ.get("REF_MAX_CONNECTIONS", "2000"))
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
        )
        credential = DevToken()
        _client = AgentsClient(
            endpoint=os.environ["REF_ENDPOINT"],
            credential=credential,  # type: ignore[arg-type]
            transport=AioHttpTransport(session=session, session_owner=False),
            authentication_policy=LoopbackBearerPolicy(credential, SCOPE),
            retry_total=0,
        )
    return _client


def frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@app.post("/api/chat")
async def chat(body: ChatRequest) -> StreamingResponse:
    client = agents()
    thread_id = body.thread_id
    if thread_id is None:
        thread = await client.threads.create()
        thread_id = thread.id
    await client.messages.create(thread_id=thread_id, role="user", content=body.message)

    async def generate() -> AsyncIterator[str]:
        yield frame(
            {"type": "metadata", "conversation_id": thread_id, "thread_id": thread_id}
        )
        parts: list[str] = []
        stream = await client.runs.stream(
            thread_id=thread_id, agent_id=os.environ["REF_AGENT_ID"]
        )
        async with stream as events:
            async for event_type, event_data, _ in events:
                if isinstance(event_data, MessageDeltaChunk):
                    parts.append(event_data.text)
                    yield frame({"type": "chunk", "content": event_data.text})
                elif isinstance(event_data, ThreadRun) and event_data.status in (
                    "failed",
                    "cancelled",
                    "expired",
                ):
                    yield frame({"type": "error", "message": str(event_data.status)})
                    return
                elif event_type == AgentStreamEvent.DONE:
                    break
        yield frame(
            {
                "type": "done",
                "full_response": "".join(parts),
                "timestamp": datetime.now(UTC).isoformat(),
            }
        )

    return StreamingResponse(generate(), media_type="text/event-stream")


@app.get("/api/health")
async def health() -> dict[str, str]:
    return {"status": "healthy", "service": "chat-api", "version": "1.0.0"}
