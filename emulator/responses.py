"""The OpenAI Responses API of new Foundry agents, with its conversations.

azure-ai-projects 2.x's `get_openai_client()` points the openai client at
``{endpoint}/openai/v1``; served there: ``POST /conversations``, ``GET|DELETE
/conversations/{id}``, ``POST /responses`` (``"stream": true`` answers SSE),
``GET /responses/{id}`` and ``POST /responses/{id}/cancel``.

A response names the agent in ``"agent_reference": {"name", "version"}`` (the
emulator has one, `FOUNDRY_AGENT_NAME`, version "1") or asks for a ``model``. Its
stream is ``event: <type>`` / ``data: {"type": <type>, "sequence_number": n, ...}``
frames (see `response_events` for their order); then the body ends.

Stream faults: run_failed sends response.failed, error_event an ``error`` event,
max_tokens and content_filter a response.incomplete with that reason; disconnect,
hang and incomplete behave as for runs. An http_404 fault is an unknown
conversation.

Unlike a classic run, a response lives on its connection, as on the service
outside background mode: when the client closes the stream the response stops,
keeps its partial text in the conversation, turns "cancelled" and is recorded in
`cancelled_runs`. The cancel endpoint accepts only background responses, which the
emulator does not run, so it answers 400 as the service does for the others.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import RESPONSE_CREATE
from .faults import check_http_fault
from .http import (
    ApiError,
    Route,
    bad_request,
    content_text,
    deleted,
    find,
    metadata,
    open_stream,
    read_json,
)
from .response_events import ResponseStream
from .store import Conversation, Message, Response, last_user_text
from .stream import HoldGate, reply_tokens

if TYPE_CHECKING:
    from .server import AgentsEmulator

FOUNDRY_AGENT_NAME = "emulator-agent"
FOUNDRY_AGENT_VERSION = "1"


class ResponsesApi:
    """Conversations and responses, stored on the emulator next to its threads."""

    def __init__(self, emulator: AgentsEmulator, gate: HoldGate) -> None:
        self.emulator = emulator
        self.gate = gate

    def routes(self, prefix: str) -> list[Route]:
        conversation = prefix + "/conversations/{conversation_id}"
        response = prefix + "/responses/{response_id}"
        return [
            (
                "POST",
                prefix + "/conversations",
                self._create_conversation,
                "conversations.create",
            ),
            ("GET", conversation, self._get_conversation, "conversations.get"),
            ("DELETE", conversation, self._delete_conversation, "conversations.delete"),
            ("POST", prefix + "/responses", self._create_response, RESPONSE_CREATE),
            ("GET", response, self._get_response, "responses.get"),
            ("POST", response + "/cancel", self._cancel_response, "responses.cancel"),
        ]

    def _conversation(self, conversation_id: str) -> Conversation:
        return find(self.emulator.conversations, conversation_id, "conversation")

    def _response(self, request: web.Request) -> Response:
        response_id = request.match_info["response_id"]
        return find(self.emulator.responses, response_id, "response")

    async def _create_conversation(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        conversation = Conversation(metadata=metadata(body))
        conversation.messages = _input_messages(conversation.id, body.get("items"))
        self.emulator.conversations[conversation.id] = conversation
        return web.json_response(conversation.to_dict())

    async def _get_conversation(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation_id"]
        return web.json_response(self._conversation(conversation_id).to_dict())

    async def _delete_conversation(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request.match_info["conversation_id"])
        for response in self.emulator.responses.values():
            if response.conversation_id == conversation.id and response.active:
                response.cancel_requested.set()
        del self.emulator.conversations[conversation.id]
        return deleted("conversation", conversation.id)

    async def _get_response(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._response(request).to_dict())

    async def _cancel_response(self, request: web.Request) -> web.StreamResponse:
        self._response(request)
        raise bad_request(
            "Only responses created with background=true can be cancelled."
        )

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        conversation_id = _conversation_id(body.get("conversation"))
        messages = _input_messages(conversation_id or "", body.get("input"))
        user_text = last_user_text(messages)
        config = self.emulator.reply_config(RESPONSE_CREATE, user_text)
        missing = ("conversation", conversation_id or "conv_unknown")
        check_http_fault(config, RESPONSE_CREATE, missing)
        agent = _agent_reference(body.get("agent_reference"))
        model = body.get("model") or config.model
        conversation = None
        if conversation_id is not None:
            conversation = self._conversation(conversation_id)
            conversation.messages.extend(messages)
            messages = conversation.messages
        response = Response(model=model, conversation_id=conversation_id, agent=agent)
        self.emulator.responses[response.id] = response
        stream = ResponseStream(
            response=response,
            conversation=conversation,
            prompt_tokens=sum(len(m.text.split()) for m in messages),
            config=config,
            # Responses cite by position: the text carries no citation markers.
            tokens=reply_tokens(
                dataclasses.replace(config, annotations=False), user_text
            ),
            gate=self.gate,
            deltas=self.emulator.deltas,
            on_cancelled=self.emulator.cancelled_runs.append,
        )
        if not body.get("stream"):
            await stream.serve(request, None)
            return web.json_response(response.to_dict())
        http_response = await open_stream(request)
        await stream.serve(request, http_response)
        return http_response


def _conversation_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str):
        return value["id"]
    raise bad_request("Invalid 'conversation': expected an id or {\"id\": ...}.")


def _agent_reference(reference: Any) -> dict[str, Any] | None:
    if reference is None:
        return None
    if not isinstance(reference, dict) or not reference.get("name"):
        raise bad_request("Invalid 'agent_reference': expected {\"name\": ...}.")
    name, version = reference["name"], reference.get("version")
    if name != FOUNDRY_AGENT_NAME or version not in (None, FOUNDRY_AGENT_VERSION):
        label = f"{name} version {version}" if version else name
        raise ApiError(404, "not_found", f"Agent {label} was not found.")
    return {
        "type": "agent_reference",
        "name": name,
        "version": FOUNDRY_AGENT_VERSION,
    }


def _input_messages(conversation_id: str, raw: Any) -> list[Message]:
    """The messages of an `input` (a string or message items) or of `items`."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [Message(thread_id=conversation_id, role="user", text=raw)]
    if not isinstance(raw, list):
        raise bad_request("Invalid type for 'input': expected a string or an array.")
    messages = []
    for item in raw:
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise bad_request("The emulator accepts only message input items.")
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise bad_request(f"Invalid value for 'role': {role!r}.")
        text = content_text(item.get("content"))
        messages.append(Message(thread_id=conversation_id, role=role, text=text))
    return messages
