"""A response's events, as the Responses API streams them.

`ResponseEvents` writes them in the order the openai client expects:
response.created, response.queued (background responses only),
response.in_progress, for each tool (`tools`) its output item (added, the
tool's own in_progress / searching / code / interpreting events, completed, done,
each item at its own output_index), then the message's response.output_item.added,
response.content_part.added,
response.output_text.delta per token (then two
response.output_text.annotation.added with `annotations`),
response.output_text.done, response.content_part.done, response.output_item.done,
response.completed. Each carries the next `sequence_number`, from 0. With
`function_calls`, the calls' function_call items come after the tools' and the
response completes there, with no message: the follow-up response that gives
their outputs streams the text.

Where they go is the subclass's: `ResponseStream` writes them on the connection
that created the response, which it lives on; a background response keeps them
(see `background`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .http import sse_frame
from .store import Conversation, Message, Response, new_id
from .stream import (
    CITATION_FILE_ID,
    CITATION_TITLE,
    CITATION_URL,
    CONTAINER_IMAGE_ID,
    IMAGE_NAME,
    INTERPRETER_CODE,
    INTERPRETER_LOGS,
    SEARCH_QUERY,
    SERVER_ERROR,
    ConnectionReply,
    PacedReply,
    Token,
    function_call,
)

CITATION_FILENAME = "agents-overview.md"


class ResponseEvents(PacedReply):
    def __init__(
        self,
        *,
        response: Response,
        conversation: Conversation | None,
        prompt_tokens: int,
        **options: Any,
    ) -> None:
        super().__init__(
            run_id=response.id,
            thread_id=conversation.id if conversation else "",
            cancel_requested=response.cancel_requested,
            **options,
        )
        self.response = response
        self.conversation = conversation
        self.prompt_tokens = prompt_tokens
        self.sequence = 0

    @property
    def active(self) -> bool:
        return self.response.active

    async def _start(self) -> None:
        response = self.response
        await self._emit("response.created", response=response.to_dict())
        if response.status == "queued":
            await self._emit("response.queued", response=response.to_dict())
            response.status = "in_progress"
        await self._emit("response.in_progress", response=response.to_dict())

    async def _tool_started(self, index: int, tool: str) -> None:
        kind = f"{tool}_call"
        item = _tool_item(tool, self.response.id, index)
        self.response.tool_items.append(item)
        at = {"output_index": index, "item_id": item["id"]}
        await self._emit("response.output_item.added", output_index=index, item=item)
        await self._emit(f"response.{kind}.in_progress", **at)
        if tool == "code_interpreter":
            await self._emit(
                "response.code_interpreter_call_code.delta",
                **at,
                delta=INTERPRETER_CODE,
            )
            await self._emit(
                "response.code_interpreter_call_code.done", **at, code=INTERPRETER_CODE
            )
            await self._emit("response.code_interpreter_call.interpreting", **at)
        else:
            await self._emit(f"response.{kind}.searching", **at)

    async def _tool_done(self, index: int, tool: str) -> None:
        item = self.response.tool_items[index]
        item["status"] = "completed"
        if tool == "code_interpreter":
            item["code"] = INTERPRETER_CODE
            item["outputs"] = [{"type": "logs", "logs": INTERPRETER_LOGS}]
        elif tool == "file_search":
            item["queries"] = [SEARCH_QUERY]
        at = {"output_index": index, "item_id": item["id"]}
        await self._emit(f"response.{tool}_call.completed", **at)
        await self._emit("response.output_item.done", output_index=index, item=item)

    async def _call_functions(self) -> bool:
        """Each call's function_call item (added, its arguments, done), then the
        response completes without a message: the client answers with
        function_call_output items in a follow-up response on the conversation."""
        response = self.response
        calls = {}
        for spec in self.config.function_calls:
            name, arguments = function_call(spec)
            index = len(response.tool_items)
            item = {
                "id": new_id("fc"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": new_id("call"),
                "name": name,
            }
            response.tool_items.append(item)
            at = {"output_index": index, "item_id": item["id"]}
            await self._emit(
                "response.output_item.added", output_index=index, item=item
            )
            await self._emit(
                "response.function_call_arguments.delta", **at, delta=arguments
            )
            await self._emit(
                "response.function_call_arguments.done", **at, arguments=arguments
            )
            item |= {"arguments": arguments, "status": "completed"}
            await self._emit("response.output_item.done", output_index=index, item=item)
            calls[item["call_id"]] = item
        if self.conversation is not None:
            self.conversation.pending_calls = calls
            # The answer's response goes on as this one would have.
            self.conversation.pending_config = dataclasses.replace(
                self.config, tools=[], function_calls=[], hold_start=False
            )
        response.calls_functions = True
        response.usage = self._usage()
        response.status = "completed"
        await self._emit("response.completed", response=response.to_dict())
        return True

    async def _open_message(self) -> None:
        await self._emit(
            "response.output_item.added",
            output_index=self._message_index(),
            item=self.response.item("in_progress", with_content=False),
        )
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        await self._emit("response.content_part.added", **self._at(), part=part)

    async def _delta(self, index: int, token: Token) -> None:
        self.response.text += token.text
        await self._emit(
            "response.output_text.delta",
            record=(index, token.text),
            **self._at(),
            delta=token.text,
            logprobs=[],
        )

    async def _completed(self) -> None:
        response = self.response
        annotations = _citations(len(response.text)) if self.config.annotations else []
        if self.config.image:
            annotations.append(_container_file(response.id, len(response.text)))
        for index, annotation in enumerate(annotations):
            response.annotations.append(annotation)
            await self._emit(
                "response.output_text.annotation.added",
                **self._at(),
                annotation_index=index,
                annotation=annotation,
            )
        await self._close_message("completed")
        response.usage = self._usage()
        self._stop("completed")
        await self._emit("response.completed", response=response.to_dict())

    async def _fail(self, fault: str) -> None:
        response = self.response
        match fault:
            case "run_failed":
                response.error = dict(SERVER_ERROR)
                self._stop("failed")
                await self._emit("response.failed", response=response.to_dict())
            case "error_event":
                response.error = dict(SERVER_ERROR)
                self._stop("failed")
                await self._emit("error", **SERVER_ERROR, param=None)
            case "max_tokens" | "content_filter":
                reason = "max_output_tokens" if fault == "max_tokens" else fault
                await self._close_message("incomplete")
                response.incomplete_details = {"reason": reason}
                response.usage = self._usage()
                self._stop("incomplete")
                await self._emit("response.incomplete", response=response.to_dict())

    def _stop(self, status: str) -> None:
        """Ends the response with `status`, keeping its text in the conversation."""
        response = self.response
        response.status = status
        if self.conversation is not None:
            message_status = "completed" if status == "completed" else "incomplete"
            self.conversation.messages.append(
                Message(
                    thread_id=self.conversation.id,
                    role="assistant",
                    text=response.text,
                    status=message_status,
                )
            )

    async def _close_message(self, status: str) -> None:
        response = self.response
        at = self._at()
        await self._emit(
            "response.output_text.done", **at, text=response.text, logprobs=[]
        )
        part = response.content_part()
        await self._emit("response.content_part.done", **at, part=part)
        await self._emit(
            "response.output_item.done",
            output_index=self._message_index(),
            item=response.item(status),
        )

    def _message_index(self) -> int:
        return len(self.response.tool_items)

    def _at(self) -> dict[str, Any]:
        return {
            "item_id": self.response.item_id,
            "output_index": self._message_index(),
            "content_index": 0,
        }

    def _usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.sent,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.prompt_tokens + self.sent,
        }

    async def _emit(
        self, event: str, record: tuple[int, str] | None = None, **fields: Any
    ) -> None:
        data = {"type": event, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        await self._send(sse_frame(data, event), record)


class ResponseStream(ResponseEvents, ConnectionReply):
    """A response outside background mode: it streams on the connection that
    created it, and stops (cancelled) when that client goes away."""


# Output item id prefixes, as the service's.
ITEM_PREFIXES = {"file_search": "fs", "code_interpreter": "ci", "web_search": "ws"}


def _tool_item(tool: str, response_id: str, index: int) -> dict[str, Any]:
    """A tool call's output item as it is added (in progress)."""
    item: dict[str, Any] = {
        "id": f"{ITEM_PREFIXES[tool]}_{response_id.removeprefix('resp_')}{index}",
        "type": f"{tool}_call",
        "status": "in_progress",
    }
    match tool:
        case "code_interpreter":
            container = f"cntr_{response_id.removeprefix('resp_')}"
            return item | {"code": "", "container_id": container, "outputs": None}
        case "web_search":
            return item | {"action": {"type": "search", "query": SEARCH_QUERY}}
        case _:
            return item | {"queries": [], "results": None}


def _container_file(response_id: str, offset: int) -> dict[str, Any]:
    """The chart that code interpreter drew, cited from its container."""
    return {
        "type": "container_file_citation",
        "container_id": f"cntr_{response_id.removeprefix('resp_')}",
        "file_id": CONTAINER_IMAGE_ID,
        "filename": IMAGE_NAME,
        "start_index": offset,
        "end_index": offset,
    }


def _citations(offset: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "url_citation",
            "url": CITATION_URL,
            "title": CITATION_TITLE,
            "start_index": offset,
            "end_index": offset,
        },
        {
            "type": "file_citation",
            "file_id": CITATION_FILE_ID,
            "filename": CITATION_FILENAME,
            "index": offset,
        },
    ]
