"""The OpenAI Responses API of new Foundry agents, with its conversations.

azure-ai-projects 2.x's `get_openai_client()` points the openai client at
``{endpoint}/openai/v1``; served there: ``POST /conversations`` (with up to 20
initial ``items``), ``GET|DELETE /conversations/{id}``, ``POST /responses``
(``"stream": true`` answers SSE), ``GET /responses/{id}`` (with
``?stream=true&starting_after=N``, SSE), ``POST /responses/{id}/cancel`` and
``POST /conversations/{id}/items`` (up to 20 items a call).

Function calls (`function_calls`): a response ends with its function_call items
and the conversation waits for their outputs. The next response in it must give
every one as a function_call_output input item (else 400, as the service
answers), and goes on as the asking response would have, streaming the text;
outputs added as conversation items (``POST …/items``) answer them too, with no
response. Every output given is kept in the conversation's `tool_outputs`.

A response names the agent in ``"agent_reference": {"name", "version"}`` (the
emulator has one, `FOUNDRY_AGENT_NAME`, version "1") or asks for a ``model``. Its
stream is ``event: <type>`` / ``data: {"type": <type>, "sequence_number": n, ...}``
frames (see `response_events` for their order); then the body ends.

Stream faults: run_failed sends response.failed, error_event an ``error`` event,
max_tokens and content_filter a response.incomplete with that reason; disconnect,
hang and incomplete behave as for runs. An http_404 fault is an unknown
conversation.

Outside background mode a response lives on its connection, as on the service:
when the client closes the stream the response stops, keeps its partial text in
the conversation, turns "cancelled" and is recorded in `cancelled_runs`; the
cancel endpoint refuses it (400). With ``"background": true`` it runs on the
emulator whoever listens (see `background`): its stored events can be streamed
again from any sequence number, and the cancel endpoint stops it, recording it in
`cancelled_runs`. Holds pause both kinds alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .background import BackgroundResponse
from .config import RESPONSE_CREATE, EmulatorConfig
from .faults import check_http_fault
from .http import (
    ApiError,
    Route,
    bad_request,
    content_text,
    deleted,
    find,
    metadata,
    not_found,
    open_stream,
    read_json,
)
from .response_events import ResponseStream
from .store import Conversation, Message, Response, last_user_text, new_id
from .stream import CONTAINER_IMAGE_ID, IMAGE_PNG, HoldGate, reply_tokens

if TYPE_CHECKING:
    from .server import AgentsEmulator

FOUNDRY_AGENT_NAME = "emulator-agent"
# The most items one call adds to a conversation, as on the service.
MAX_ITEMS = 20
FOUNDRY_AGENT_VERSION = "1"


class ResponsesApi:
    """Conversations and responses, stored on the emulator next to its threads."""

    def __init__(self, emulator: AgentsEmulator, gate: HoldGate) -> None:
        self.emulator = emulator
        self.gate = gate
        # The background responses, by id, and the tasks that drive them.
        self._background: dict[str, BackgroundResponse] = {}
        self._tasks: set[asyncio.Task[None]] = set()

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
            (
                "POST",
                conversation + "/items",
                self._add_items,
                "conversations.items.create",
            ),
            ("POST", prefix + "/responses", self._create_response, RESPONSE_CREATE),
            ("GET", response, self._get_response, "responses.get"),
            ("POST", response + "/cancel", self._cancel_response, "responses.cancel"),
            (
                "GET",
                prefix + "/containers/{container_id}/files/{file_id}/content",
                self._container_file_content,
                "containers.files.content",
            ),
        ]

    def _conversation(self, conversation_id: str) -> Conversation:
        return find(self.emulator.conversations, conversation_id, "conversation")

    def _response(self, request: web.Request) -> Response:
        response_id = request.match_info["response_id"]
        return find(self.emulator.responses, response_id, "response")

    async def _create_conversation(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        items = body.get("items")
        if isinstance(items, list) and len(items) > MAX_ITEMS:
            raise bad_request(f"'items' may hold at most {MAX_ITEMS} items.")
        conversation = Conversation(metadata=metadata(body))
        conversation.messages = _input_messages(conversation.id, body.get("items"))
        self.emulator.conversations[conversation.id] = conversation
        return web.json_response(conversation.to_dict())

    async def _get_conversation(self, request: web.Request) -> web.StreamResponse:
        conversation_id = request.match_info["conversation_id"]
        return web.json_response(self._conversation(conversation_id).to_dict())

    async def _container_file_content(self, request: web.Request) -> web.StreamResponse:
        """The bytes of a file in a code interpreter's container."""
        file_id = request.match_info["file_id"]
        container_id = request.match_info["container_id"]
        if file_id != CONTAINER_IMAGE_ID or not container_id.startswith("cntr_"):
            raise not_found("file", file_id)
        return web.Response(body=IMAGE_PNG, content_type="application/octet-stream")

    async def _add_items(self, request: web.Request) -> web.StreamResponse:
        """Adds messages, or outputs of the function calls the conversation
        waits for, without a response."""
        conversation = self._conversation(request.match_info["conversation_id"])
        items = (await read_json(request)).get("items")
        if not isinstance(items, list) or not 0 < len(items) <= MAX_ITEMS:
            raise bad_request(f"'items' must hold 1 to {MAX_ITEMS} items.")
        messages = _input_messages(conversation.id, items)
        outputs = _call_outputs(items)
        for call_id in outputs:
            if call_id not in conversation.pending_calls:
                raise bad_request(
                    "No tool call found for function call output with call_id "
                    f"{call_id}."
                )
        for call_id, output in outputs.items():
            del conversation.pending_calls[call_id]
            conversation.tool_outputs[call_id] = output
        conversation.messages.extend(messages)
        added = [_item(m) for m in messages] + [
            {
                "id": new_id("fco"),
                "type": "function_call_output",
                "call_id": call_id,
                "output": output,
                "status": "completed",
            }
            for call_id, output in outputs.items()
        ]
        return web.json_response(
            {
                "object": "list",
                "data": added,
                "first_id": added[0]["id"] if added else None,
                "last_id": added[-1]["id"] if added else None,
                "has_more": False,
            }
        )

    async def _delete_conversation(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request.match_info["conversation_id"])
        for response in self.emulator.responses.values():
            if response.conversation_id == conversation.id and response.active:
                response.cancel_requested.set()
        del self.emulator.conversations[conversation.id]
        return deleted("conversation", conversation.id)

    async def _get_response(self, request: web.Request) -> web.StreamResponse:
        response = self._response(request)
        if request.query.get("stream", "false").lower() != "true":
            return web.json_response(response.to_dict())
        background = self._background.get(response.id)
        if background is None:
            raise bad_request(
                "Only responses created with background=true can be streamed."
            )
        after = _starting_after(request.query.get("starting_after"))
        http_response = await open_stream(request)
        await background.log.follow(request, http_response, after)
        return http_response

    async def _cancel_response(self, request: web.Request) -> web.StreamResponse:
        response = self._response(request)
        background = self._background.get(response.id)
        if background is None:
            raise bad_request(
                "Only responses created with background=true can be cancelled."
            )
        if response.active:
            if not response.cancel_requested.is_set():
                response.cancel_requested.set()
                self.emulator.cancelled_runs.append(response.id)
            # Answers with the response as the cancel left it.
            await background.finished.wait()
        elif response.status != "cancelled":
            raise bad_request(f"Cannot cancel a {response.status} response.")
        return web.json_response(response.to_dict())

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        background = bool(body.get("background"))
        if background and body.get("store") is False:
            raise bad_request("Background responses must be stored (store=true).")
        conversation_id = _conversation_id(body.get("conversation"))
        if conversation_id is not None and body.get("previous_response_id"):
            raise bad_request(
                "'previous_response_id' cannot be used with 'conversation'."
            )
        messages = _input_messages(conversation_id or "", body.get("input"))
        outputs = _call_outputs(body.get("input"))
        if outputs:
            config, answered = self._answer(conversation_id, outputs)
            user_text = last_user_text(answered.messages)
        else:
            user_text = last_user_text(messages)
            config = self.emulator.reply_config(RESPONSE_CREATE, user_text)
            missing = ("conversation", conversation_id or "conv_unknown")
            check_http_fault(config, RESPONSE_CREATE, missing)
        agent = _agent_reference(body.get("agent_reference"))
        model = body.get("model") or config.model
        conversation = None
        if conversation_id is not None:
            conversation = self._conversation(conversation_id)
            if unanswered := next(iter(conversation.pending_calls), None):
                raise bad_request(
                    f"No tool output found for function call {unanswered}."
                )
            conversation.messages.extend(messages)
            messages = conversation.messages
        response = Response(
            model=model,
            conversation_id=conversation_id,
            agent=agent,
            background=background,
            status="queued" if background else "in_progress",
        )
        self.emulator.responses[response.id] = response
        options: dict[str, Any] = {
            "response": response,
            "conversation": conversation,
            "prompt_tokens": sum(len(m.text.split()) for m in messages),
            "config": config,
            # Responses cite by position: the text carries no citation markers.
            "tokens": reply_tokens(
                dataclasses.replace(config, annotations=False), user_text
            ),
            "gate": self.gate,
            "deltas": self.emulator.deltas,
        }
        if background:
            return await self._run_in_background(request, body, options)
        stream = ResponseStream(
            **options, on_cancelled=self.emulator.cancelled_runs.append
        )
        if not body.get("stream"):
            await stream.serve(request, None)
            return web.json_response(response.to_dict())
        http_response = await open_stream(request)
        await stream.serve(request, http_response)
        return http_response

    def _answer(
        self, conversation_id: str | None, outputs: dict[str, str]
    ) -> tuple[EmulatorConfig, Conversation]:
        """The conversation whose function calls `outputs` answer, all of them
        (else 400), and the config its last response goes on with."""
        if conversation_id is None:
            raise bad_request(
                "The emulator takes function_call_output items in a conversation."
            )
        conversation = self._conversation(conversation_id)
        pending = conversation.pending_calls
        for call_id in outputs:
            if call_id not in pending:
                raise bad_request(
                    "No tool call found for function call output with call_id "
                    f"{call_id}."
                )
        for call_id in pending:
            if call_id not in outputs:
                raise bad_request(f"No tool output found for function call {call_id}.")
        conversation.pending_calls = {}
        conversation.tool_outputs.update(outputs)
        return conversation.pending_config, conversation

    async def _run_in_background(
        self, request: web.Request, body: dict[str, Any], options: dict[str, Any]
    ) -> web.StreamResponse:
        """Starts a background response; streams it when asked, else answers it
        queued."""
        reply = BackgroundResponse(**options)
        responses = self.emulator.responses
        # Forgets those the emulator no longer knows (reset).
        self._background = {
            response_id: kept
            for response_id, kept in self._background.items()
            if response_id in responses
        }
        self._background[reply.run_id] = reply
        task = asyncio.create_task(reply.run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if not body.get("stream"):
            return web.json_response(reply.response.to_dict())
        http_response = await open_stream(request)
        await reply.log.follow(request, http_response, -1)
        return http_response


def _starting_after(value: str | None) -> int:
    """The sequence number a stream starts after (-1: before the first event)."""
    if value is None:
        return -1
    if not (value.isascii() and value.isdigit()):
        raise bad_request("Invalid 'starting_after': expected a non-negative integer.")
    return int(value)


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
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            continue
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise bad_request(
                "The emulator accepts only message and function_call_output items."
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise bad_request(f"Invalid value for 'role': {role!r}.")
        text = content_text(item.get("content"))
        messages.append(Message(thread_id=conversation_id, role=role, text=text))
    return messages


def _item(message: Message) -> dict[str, Any]:
    """A message as a conversation item."""
    kind = "output_text" if message.role == "assistant" else "input_text"
    return {
        "type": "message",
        "id": message.id,
        "status": "completed",
        "role": message.role,
        "content": [{"type": kind, "text": message.text}],
    }


def _call_outputs(raw: Any) -> dict[str, str]:
    """The function_call_output items of an `input`: output by call id."""
    outputs: dict[str, str] = {}
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, dict) and item.get("type") == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not (isinstance(call_id, str) and isinstance(output, str)):
                raise bad_request(
                    "Invalid function_call_output: expected a call_id and an output."
                )
            outputs[call_id] = output
    return outputs
