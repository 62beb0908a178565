"""New Azure AI Foundry agents (named and versioned, azure-ai-projects 2.x) through
the OpenAI Responses protocol, with the conversation kept by the service.

`AIProjectClient.get_openai_client()` gives an `AsyncOpenAI` on ``{project
endpoint}/openai/v1`` that sends a bearer token for https://ai.azure.com (the dev
token for the loopback emulator). Every call goes through that client, none
through azure-core, whose bearer policy refuses plain http. A new chat creates a
conversation (``conv_…``, kept where a classic thread id is); each message is one
streamed `responses.create` naming the agent.

A regenerate or an edit of the last message (`ReplyRequest.rewind`) is answered in
a new conversation seeded with the conversation as the page shows it (the earlier
turns as message items), and the old conversation is deleted: the agent sees
exactly what the page shows.

Responses run in background mode: the service generates a response whether or not
its stream is open, and keeps its events. Each event's `sequence_number` is the
cursor of the deltas and citations it carries, so that `resume_reply` can follow
a response whose process died from there (``GET /responses/{id}?stream=true&
starting_after=N``). Stop: closing a stream no longer ends its response, so
`cancel()` asks ``POST /responses/{id}/cancel``, which works from any replica; the
cancelled response's streams end with response.failed of status "cancelled".

Function tools: a response that wants the site's functions completes with
`function_call` items. They run through the request's ToolBox, and a follow-up
response in the same conversation (the service refuses `previous_response_id`
beside a conversation) gets their `function_call_output`s and streams the rest of
the reply: its id becomes the reply's run, to stop and resume, and its
response.created position the cursor. A conversation with calls left unanswered
refuses its next message, so calls that will not run (a function the site
lacks, a stop, a producer lost while they ran) are answered with an error, as
conversation items.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from azure.ai.projects.aio import AIProjectClient
from django.conf import settings
from openai import APIError, AsyncOpenAI, NotFoundError, omit
from openai.types.responses import Response

from chat.backends import base
from chat.backends._azure import (
    credential,
    project_endpoint,
    project_endpoint_problems,
)
from chat.backends._errors import incomplete, model_rate_limited, stream_error
from chat.backends._openai import api_error, http_client, stream_broke
from chat.backends.base import (
    BackendError,
    ChatBackend,
    Event,
    ReplyRequest,
    Resumption,
)
from chat.files import file_kind
from chat.tools import ToolCall, progress, refused

logger = logging.getLogger(__name__)

SERVICE = "the agent service"
TEXT_DELTAS = frozenset({"response.output_text.delta", "response.refusal.delta"})
# The most items the service takes in one call that adds them to a conversation.
ITEMS_PER_CALL = 20
# Output items that wait for the client to act: chatsite runs no tools.
CLIENT_ACTIONS = frozenset({"function_call", "mcp_approval_request"})
# Output items that wait for the client to act, other than function calls.
CLIENT_ACTIONS = frozenset({"mcp_approval_request"})


@dataclass(frozen=True, slots=True)
class FunctionCalls:
    """A response that completed asking for the site's functions: not an end,
    the calls' outputs go to a follow-up response."""

    calls: list[ToolCall]


def _citation(annotation: Any) -> dict[str, Any] | None:
    """The classic backend's citation shape; Responses cite by position, so
    there is no marker `text`, and a file citation has a filename for title."""
    kind = getattr(annotation, "type", None)
    if kind == "url_citation":
        return {
            "kind": kind,
            "text": None,
            "url": getattr(annotation, "url", None),
            "title": getattr(annotation, "title", None),
        }
    if kind == "file_citation":
        return {
            "kind": "file_citation",
            "text": None,
            "file_id": getattr(annotation, "file_id", None),
            "quote": None,
            "title": getattr(annotation, "filename", None),
        }
    return None


def _annotation(
    annotation: Any, sequence_number: int
) -> base.Citation | base.FileOutput | None:
    """A citation, or the file of a code interpreter's container it cites."""
    if getattr(annotation, "type", None) == "container_file_citation":
        name = getattr(annotation, "filename", None)
        return base.FileOutput(
            file_id=annotation.file_id,
            kind=file_kind(name),
            name=name,
            container_id=annotation.container_id,
            cursor=sequence_number,
        )
    citation = _citation(annotation)
    return base.Citation(citation, cursor=sequence_number) if citation else None


# Output items of tools the service runs, by type: the tool frame's kind.
SERVER_TOOLS = {
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "web_search_call": "web_search",
    "mcp_call": "mcp",
    "image_generation_call": "image_generation",
    "computer_call": "computer",
}
TOOL_ENDINGS = {"completed": "completed", "failed": "failed", "incomplete": "failed"}


def _tool_progress(item: Any, sequence_number: int, *, done: bool) -> base.ToolProgress:
    """A server-side tool's output item, when added or done, as a ToolProgress."""
    kind = SERVER_TOOLS[item.type]
    status = TOOL_ENDINGS.get(item.status, "failed") if done else "in_progress"
    code = logs = None
    if kind == "code_interpreter" and done:
        code = getattr(item, "code", None)
        outputs = getattr(item, "outputs", None) or ()
        logs = "".join(getattr(o, "logs", "") for o in outputs if o.type == "logs")
    return base.ToolProgress(
        id=item.id,
        kind=kind,
        name=getattr(item, "name", None) or kind,
        status=status,
        input=code,
        output=logs or None,
        cursor=sequence_number,
    )


def _output_item(call_id: str, output: str) -> dict[str, str]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def _usage(response: Response) -> dict[str, Any] | None:
    usage = response.usage
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }


def _completed(response: Response) -> base.Completed | FunctionCalls:
    output = response.output or ()
    if any(item.type in CLIENT_ACTIONS for item in output):
        raise BackendError(
            base.RUN_FAILED,
            "the agent asked for a client-side tool call, which chatsite does not run",
        )
    calls = [
        ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
        for item in output
        if item.type == "function_call"
    ]
    if calls:
        return FunctionCalls(calls)
    return base.Completed(usage=_usage(response))


def _ended(response: Response) -> base.Completed:
    """The outcome of a response.failed or response.incomplete event."""
    if response.status == "cancelled":
        return base.Completed(usage=_usage(response), cancelled=True)
    if response.status == "incomplete":
        details = response.incomplete_details
        raise incomplete(details.reason if details else None)
    error = response.error
    code = error.code if error else None
    message = (error.message if error else None) or ""
    if code == "rate_limit_exceeded":
        raise model_rate_limited(message)
    raise BackendError(
        base.RUN_FAILED, f"the agent's response failed: {code}: {message}"
    )


async def _reply_events(
    stream: Any, *, logged: int = 0
) -> AsyncIterator[Event | FunctionCalls]:
    """The events of a response's stream, each delta and citation with its
    sequence number for cursor, ending like `stream_reply` or with the
    `FunctionCalls` it asks for.

    `logged` characters of delta text are left out, with the citations that come
    among them: a stream followed again from its start gives them once more.
    """
    try:
        async with stream:
            async for event in stream:
                kind = event.type
                if kind in TEXT_DELTAS:
                    delta = event.delta or ""
                    skipped = min(logged, len(delta))
                    logged -= skipped
                    if text := delta[skipped:]:
                        yield base.Delta(text, cursor=event.sequence_number)
                elif kind == "response.output_text.annotation.added":
                    cited = _annotation(event.annotation, event.sequence_number)
                    if cited and not logged:
                        yield cited
                elif kind in (
                    "response.output_item.added",
                    "response.output_item.done",
                ):
                    if event.item.type in SERVER_TOOLS and not logged:
                        yield _tool_progress(
                            event.item,
                            event.sequence_number,
                            done=kind == "response.output_item.done",
                        )
                elif kind == "response.created":
                    yield base.RunStarted(event.response.id, event.sequence_number)
                elif kind == "response.completed":
                    yield _completed(event.response)
                    return
                elif kind in ("response.failed", "response.incomplete"):
                    yield _ended(event.response)
                    return
                elif kind == "error":
                    raise stream_error(
                        event.code,
                        event.message,
                        service=SERVICE,
                        default=base.UPSTREAM_UNAVAILABLE,
                    )
    except BackendError:
        raise
    except Exception as exc:
        raise stream_broke(exc, SERVICE) from exc
    raise BackendError(
        base.INCOMPLETE, "the agent's reply ended before the response finished"
    )


class FoundryBackend(ChatBackend):
    alias = "foundry"
    label = "Azure AI Foundry agent"
    resumable = True

    def __init__(self) -> None:
        self.endpoint = project_endpoint()
        self.agent_name = settings.AZURE_AI_AGENT_NAME
        self.agent_version = settings.AZURE_AI_AGENT_VERSION
        self._project: AIProjectClient | None = None
        self._client: AsyncOpenAI | None = None
        self._credential: Any = None

    def configuration_problems(self) -> list[str]:
        problems = project_endpoint_problems(self.endpoint)
        if not self.agent_name:
            problems.append("set AZURE_AI_AGENT_NAME")
        return problems

    def describe(self) -> dict[str, Any]:
        version = f" (version {self.agent_version})" if self.agent_version else ""
        return super().describe() | {
            "agent": f"{self.agent_name}{version}" or self.label
        }

    def client(self) -> AsyncOpenAI:
        if self._client is None:
            problems = self.configuration_problems()
            if problems:
                raise BackendError(base.UPSTREAM_AUTH, "; ".join(problems))
            self._credential = credential()
            self._project = AIProjectClient(
                endpoint=self.endpoint, credential=self._credential
            )
            self._client = self._project.get_openai_client(
                http_client=http_client(), max_retries=settings.CHAT_UPSTREAM_RETRIES
            )
        return self._client

    def _agent_reference(self) -> dict[str, str]:
        reference = {"name": self.agent_name, "type": "agent_reference"}
        if self.agent_version:
            reference["version"] = self.agent_version
        return reference

    async def _respond(self, conversation_id: str, message: str) -> Any:
        return await self.client().responses.create(
            conversation=conversation_id,
            input=message,
            stream=True,
            # Kept by the service: a stream can be resumed and a stop reach it
            # from any process.
            background=True,
            extra_body={"agent_reference": self._agent_reference()},
        )

    async def _new_conversation(self, history: list[base.Turn]) -> str:
        """A conversation holding `history`, as the service takes items: at most
        ITEMS_PER_CALL a call."""
        client = self.client()
        items = [
            {"type": "message", "role": turn.role, "content": turn.content}
            for turn in history
            if turn.content
        ]
        first, rest = items[:ITEMS_PER_CALL], items[ITEMS_PER_CALL:]
        conversation = await client.conversations.create(items=first or omit)
        for start in range(0, len(rest), ITEMS_PER_CALL):
            await client.conversations.items.create(
                conversation.id, items=rest[start : start + ITEMS_PER_CALL]
            )
        return conversation.id

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        self.client()  # a configuration problem fails here, before anything
        conversation_id = request.thread_id
        replaced = stream = forked = None
        if request.rewind:
            # The conversation holds a turn that is no longer shown: a new one
            # with what is shown, and the old one is deleted.
            forked, conversation_id = conversation_id, None
        try:
            if conversation_id is not None:
                try:
                    stream = await self._respond(conversation_id, request.message)
                except NotFoundError:
                    # The conversation is gone upstream (deleted, expired): start
                    # a new one and say so in the metadata.
                    replaced, conversation_id = conversation_id, None
            if conversation_id is None:
                history = request.history if request.rewind else []
                conversation_id = await self._new_conversation(history)
        except Exception as exc:
            raise api_error(exc, SERVICE) from exc
        # Known before the response starts, so a failed first reply keeps it.
        yield base.ThreadReady(conversation_id, replaced)
        if forked:
            base.in_background(
                self.delete_thread(forked), f"deleting conversation {forked}"
            )
        if stream is None:
            try:
                stream = await self._respond(conversation_id, request.message)
            except NotFoundError as exc:
                # On a conversation that exists (new, or just replaced): the
                # agent is missing.
                raise BackendError(
                    base.RUN_FAILED,
                    f"the project has no agent {self.describe()['agent']}",
                ) from exc
            except Exception as exc:
                raise api_error(exc, SERVICE) from exc
        while True:
            calls = None
            async for event in _reply_events(stream):
                if type(event) is FunctionCalls:
                    calls = event.calls
                else:
                    yield event
            if calls is None:
                return
            outputs: list[dict[str, str]] = []
            async for tool_event in self._call_functions(
                request, conversation_id, calls, outputs
            ):
                yield tool_event
            stream = await self._answer(conversation_id, outputs)

    async def _call_functions(
        self,
        request: ReplyRequest,
        conversation_id: str,
        calls: list[ToolCall],
        outputs: list[dict[str, str]],
    ) -> AsyncIterator[Event]:
        """Runs the calls a response ended with, a tool frame before and after
        each, adding their outputs to `outputs` for the follow-up response.

        The conversation waits for an output of every call: whenever they are
        not all run (a function the site lacks, a stop), error outputs are
        added to it, so that its next message is not refused."""
        box = request.tools
        missing = box.unknown(calls) if box else [call.name for call in calls]
        if missing or box is None:
            await self._abandon(conversation_id, calls, "this site has no such tool")
            raise refused(missing or ["a function"])
        for call in calls:
            yield progress(call)
        try:
            results = await box.run(calls)
        except asyncio.CancelledError:
            await asyncio.shield(
                self._abandon(conversation_id, calls, "the user stopped the reply")
            )
            raise
        for result in results:
            yield progress(result.call, result)
        outputs += [_output_item(r.call.id, r.output) for r in results]

    async def _answer(self, conversation_id: str, outputs: list[dict[str, str]]) -> Any:
        """The streamed follow-up response that gives the agent `outputs`."""
        try:
            return await self.client().responses.create(
                conversation=conversation_id,
                input=outputs,
                stream=True,
                background=True,
                extra_body={"agent_reference": self._agent_reference()},
            )
        except Exception as exc:
            raise api_error(exc, SERVICE) from exc

    async def _abandon(
        self, conversation_id: str, calls: list[ToolCall], reason: str
    ) -> None:
        """Answers `calls` with an error, as items of the conversation, without
        a response; best effort."""
        items = [_output_item(c.id, json.dumps({"error": reason})) for c in calls]
        try:
            await self.client().conversations.items.create(conversation_id, items=items)
        except Exception:
            logger.warning(
                "answering the abandoned calls of %s failed", conversation_id
            )

    async def resume_reply(self, resumption: Resumption) -> AsyncIterator[Event]:
        """Follows the response again after the resumption's cursor; without one,
        from its start, leaving out the text the reply's log already holds.
        Yields no RunStarted: the run is the resumption's.

        A response that asks for the site's functions is not finished here: who
        asked went with the process that died, so the calls are answered with an
        error and the reply ends as lost."""
        cursor = resumption.cursor
        try:
            stream = await self.client().responses.retrieve(
                resumption.run_id,
                stream=True,
                starting_after=omit if cursor is None else cursor,
            )
        except NotFoundError as exc:
            # The service keeps a background response about ten minutes.
            raise BackendError(
                base.PRODUCER_LOST,
                "the agent service no longer has this reply; send your message again",
            ) from exc
        except Exception as exc:
            raise api_error(exc, SERVICE) from exc
        logged = len(resumption.text) if cursor is None else 0
        async for event in _reply_events(stream, logged=logged):
            if type(event) is FunctionCalls:
                reason = "the server running the tools stopped"
                await self._abandon(resumption.thread_id, event.calls, reason)
                raise BackendError(
                    base.PRODUCER_LOST,
                    f"{reason} before the agent had its answers; "
                    "send your message again",
                )
            if type(event) is not base.RunStarted:
                yield event

    async def file_content(self, file: base.FileOutput) -> AsyncGenerator[bytes, None]:
        if not file.container_id:
            raise BackendError(base.THREAD_NOT_FOUND, "the file is in no container")
        content = self.client().containers.files.content.with_streaming_response
        try:
            async with content.retrieve(
                file.file_id, container_id=file.container_id
            ) as response:
                async for chunk in response.iter_bytes():
                    yield chunk
        except NotFoundError as exc:
            raise BackendError(
                base.THREAD_NOT_FOUND, "the agent service no longer has this file"
            ) from exc
        except BackendError:
            raise
        except APIError as exc:
            raise api_error(exc, SERVICE) from exc
        except Exception as exc:
            raise stream_broke(exc, SERVICE) from exc

    async def cancel(self, thread_id: str, run_id: str) -> None:
        try:
            await self.client().responses.cancel(run_id)
        except APIError as exc:
            # It has already ended (or is unknown): nothing is left to stop.
            logger.info("cancel of response %s answered %s", run_id, exc.message)

    async def delete_thread(self, thread_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            await self.client().conversations.delete(thread_id)

    async def aclose(self) -> None:
        await base.close_each(self._client, self._project, self._credential)
        self._client = self._project = self._credential = None
