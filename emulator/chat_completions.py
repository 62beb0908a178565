"""The OpenAI chat completions API that Azure OpenAI, Ollama, vLLM and llama.cpp
servers speak: ``POST /v1/chat/completions`` (give the openai client
``{base_url}/v1``), also under Azure OpenAI's ``/openai/v1``.

Any model name is accepted and echoed. A stream is ``data: {chunk}`` frames: the
assistant role, one chunk per token, a chunk with the finish reason, a usage chunk
when ``stream_options.include_usage``, then ``data: [DONE]``. Like a foreground
response, a completion lives on its connection: a client that closes the stream
stops it, and its id goes to `cancelled_runs`.

Stream faults: run_failed sends a ``data: {"error": ...}`` object (code
model_error), error_event an ``event: error`` with a server_error, max_tokens and
content_filter finish with reason length / content_filter; disconnect, hang and
incomplete behave as for runs. An http_404 fault is an unknown model.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .config import CHAT_COMPLETION_CREATE
from .faults import check_http_fault
from .http import (
    ApiError,
    Route,
    bad_request,
    content_text,
    open_stream,
    read_json,
    sse_frame,
)
from .store import ChatCompletion, Message, last_user_text
from .stream import SERVER_ERROR, ConnectionReply, HoldGate, Token, reply_tokens

if TYPE_CHECKING:
    from .server import AgentsEmulator

MODEL_ERROR = {
    "code": "model_error",
    "message": "The model failed while generating the reply.",
    "type": "model_error",
    "param": None,
}
FINISH_REASONS = {"max_tokens": "length", "content_filter": "content_filter"}


class CompletionStream(ConnectionReply):
    def __init__(
        self,
        *,
        completion: ChatCompletion,
        prompt_tokens: int,
        include_usage: bool,
        **options: Any,
    ) -> None:
        super().__init__(
            run_id=completion.id,
            thread_id="",
            cancel_requested=completion.cancel_requested,
            **options,
        )
        self.completion = completion
        self.prompt_tokens = prompt_tokens
        self.include_usage = include_usage

    @property
    def active(self) -> bool:
        return self.completion.active

    async def _start(self) -> None:
        await self._chunk({"role": "assistant", "content": ""})

    async def _delta(self, index: int, token: Token) -> None:
        self.completion.text += token.text
        await self._chunk({"content": token.text}, record=(index, token.text))

    async def _completed(self) -> None:
        await self._finish("stop")

    async def _fail(self, fault: str) -> None:
        if fault in FINISH_REASONS:
            return await self._finish(FINISH_REASONS[fault])
        self._stop("failed")
        if fault == "run_failed":
            await self._send(sse_frame({"error": MODEL_ERROR}))
        else:
            error = {**SERVER_ERROR, "type": "server_error", "param": None}
            await self._send(sse_frame({"error": error}, "error"))

    async def _finish(self, reason: str) -> None:
        completion = self.completion
        completion.finish_reason = reason
        completion.usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.sent,
            "total_tokens": self.prompt_tokens + self.sent,
        }
        self._stop("completed")
        await self._chunk({}, finish_reason=reason)
        if self.include_usage:
            await self._send(sse_frame(self._base(choices=[], usage=completion.usage)))
        await self._send(sse_frame("[DONE]"))

    def _stop(self, status: str) -> None:
        self.completion.status = status

    def _base(self, **fields: Any) -> dict[str, Any]:
        completion = self.completion
        chunk = {
            "id": completion.id,
            "object": "chat.completion.chunk",
            "created": completion.created,
            "model": completion.model,
            "system_fingerprint": None,
            **fields,
        }
        if self.include_usage:
            chunk.setdefault("usage", None)
        return chunk

    async def _chunk(
        self,
        delta: dict[str, Any],
        *,
        finish_reason: str | None = None,
        record: tuple[int, str] | None = None,
    ) -> None:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        await self._send(sse_frame(self._base(choices=[choice])), record)


class ChatCompletionsApi:
    def __init__(self, emulator: AgentsEmulator, gate: HoldGate) -> None:
        self.emulator = emulator
        self.gate = gate

    def routes(self) -> list[Route]:
        return [
            ("POST", path, self._create, CHAT_COMPLETION_CREATE)
            for path in ("/v1/chat/completions", "/openai/v1/chat/completions")
        ]

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await read_json(request)
        messages = _messages(body.get("messages"))
        config = self.emulator.reply_config(
            CHAT_COMPLETION_CREATE, last_user_text(messages)
        )
        model = body.get("model")
        check_http_fault(config, CHAT_COMPLETION_CREATE, ("model", str(model)))
        if not model or not isinstance(model, str):
            raise bad_request("Missing required parameter: 'model'.")
        completion = ChatCompletion(model=model)
        self.emulator.chat_completions[completion.id] = completion
        stream_options = body.get("stream_options") or {}
        stream = CompletionStream(
            completion=completion,
            prompt_tokens=sum(len(m.text.split()) for m in messages),
            include_usage=bool(stream_options.get("include_usage")),
            # Chat completions call no server-side tools.
            config=dataclasses.replace(
                config, tools=[], hold_tool=False, function_calls=[]
            ),
            # Chat completions have no citations.
            tokens=reply_tokens(
                dataclasses.replace(config, annotations=False), last_user_text(messages)
            ),
            gate=self.gate,
            deltas=self.emulator.deltas,
            on_cancelled=self.emulator.cancelled_runs.append,
        )
        if not body.get("stream"):
            await stream.serve(request, None)
            if completion.status == "failed":
                raise ApiError(500, "server_error", SERVER_ERROR["message"])
            return web.json_response(completion.to_dict())
        response = await open_stream(request)
        await stream.serve(request, response)
        return response


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("Invalid 'messages': expected a non-empty array.")
    messages = []
    for item in raw:
        if not isinstance(item, dict):
            raise bad_request("Invalid message: expected an object.")
        role = item.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise bad_request(f"Invalid value for 'role': {role!r}.")
        text = content_text(item.get("content") or "")
        messages.append(Message(thread_id="", role=role, text=text))
    return messages
