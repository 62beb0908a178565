"""Classic Azure AI Foundry agents (`asst_…`, threads and runs) through
azure-ai-agents' async client.

A reply costs one upstream call: a new conversation creates its thread with the
user message and streams the run in one request (`POST /threads/runs`), a
follow-up passes the message as `additional_messages` on the run. Events are split
and parsed here (one JSON parse each) instead of through the SDK's per-event model
classes.

A regenerate or an edit of the last message (`ReplyRequest.rewind`) cannot take
the replaced turn out of the thread (the service deletes no messages): the reply
is written in a new thread seeded with the conversation as it is shown, and the
old thread is deleted.

A run goes on upstream when its stream is lost, but nothing streams it again:
`resume_reply` polls the run until it ends and then reads the rest of the reply
from the run's message, the only text the service vouches for.
"""

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
from azure.ai.agents.aio import AgentsClient
from azure.ai.agents.models import AsyncAgentRunStream, BaseAsyncAgentEventHandler
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.policies import AsyncBearerTokenCredentialPolicy
from azure.core.pipeline.transport import AioHttpTransport
from django.conf import settings

from chat.backends import base
from chat.backends._azure import (
    credential,
    is_loopback,
    project_endpoint,
    project_endpoint_problems,
)
from chat.backends._errors import model_rate_limited
from chat.backends.base import (
    BackendError,
    ChatBackend,
    Event,
    ReplyRequest,
    Resumption,
)
from chat.files import file_kind
from chat.tools import ToolCall, progress, refused
from chatsite.ids import uuid4

logger = logging.getLogger(__name__)

SCOPE = "https://ai.azure.com/.default"


class LoopbackBearerPolicy(AsyncBearerTokenCredentialPolicy):
    """Lets the bearer token travel over plain http, for loopback endpoints only."""

    async def on_request(self, request: Any) -> None:
        request.context["enforce_https"] = False
        await super().on_request(request)


class RawEvents(BaseAsyncAgentEventHandler[tuple[str, Any]]):
    """Yields (event name, parsed JSON) pairs, skipping the SDK's model objects.

    It splits the byte stream itself: the SDK's reader appends every read to one
    buffer and, per event, searches it from the start and copies what follows,
    then decodes the event and splits it again as text. Here each read is split
    once and each `data:` line goes to orjson as bytes. Events end at a blank
    line, as the SDK reads them; a tail without one is the last event."""

    def __init__(self) -> None:
        super().__init__()
        # The events of the last read not yet taken, last first.
        self._events: list[bytes] = []
        self._tail = b""

    async def __anext__(self) -> tuple[str, Any]:
        while not self._events:
            body = self.response_iterator
            if body is None:
                raise ValueError("The response handler was not initialized.")
            if type(body) is UpstreamBody:
                # Its bytes straight from aiohttp: a read is one await, not
                # three (anext, the body's __anext__, readany).
                try:
                    chunk = await body.content.readany()
                except (aiohttp.ClientError, TimeoutError) as err:
                    raise body.failed(err) from err
                if not chunk:
                    body.ended()
                    chunk = None
            else:  # the SDK's own reader (a stream that tool outputs continue)
                chunk = await anext(body, None)
            if chunk is None:
                tail, self._tail = self._tail.strip(), b""
                if tail:
                    return _parse_event(tail)
                raise StopAsyncIteration
            pieces = (self._tail + chunk).split(b"\n\n")
            self._tail = pieces.pop()
            self._events = [piece for piece in reversed(pieces) if piece.strip()]
        return _parse_event(self._events.pop())


# The names an event stream repeats, decoded once.
EVENT_NAMES = {
    name.encode(): name
    for name in (
        "thread.message.delta",
        "thread.message.created",
        "thread.message.in_progress",
        "thread.message.completed",
        "thread.run.created",
        "thread.run.queued",
        "thread.run.in_progress",
        "thread.run.completed",
        "thread.run.step.created",
        "thread.run.step.in_progress",
        "thread.run.step.delta",
        "thread.run.step.completed",
        "thread.created",
        "done",
    )
}


class UpstreamBody:
    """An event stream's bytes as they arrive, read from the aiohttp response.

    The SDK hands a streamed response back as `iter_bytes()`, azure-core's
    generator over its download generator: per read, two generator layers, a
    backwards-compatible attribute lookup and a header lookup, and a read of a
    fixed block size. The operations' `cls` keyword (azure-core's hook for what
    an operation returns) passes the response here instead, once the pipeline
    has sent the request and checked its status. Each read takes what has
    arrived; read errors become azure-core's, as its generator raises them. The
    backend's aiohttp session decompresses a compressed body itself (aiohttp's
    default, which azure-core then leaves alone). `close()`, which the SDK's
    stream calls on leaving, closes the connection of a body not read to its
    end."""

    __slots__ = ("_response", "content")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.content = response.content
        # aiohttp bounds the time between two reads of the socket by arming a
        # new timer at every read: a timer handle, a context and a callback per
        # delta. A streamed reply's silence is bounded by the relay instead
        # (CHAT_UPSTREAM_TIMEOUT_SECONDS, from its last event), so the body
        # is read without it; the request and its headers kept it.
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None

    @classmethod
    def of(cls, pipeline_response: Any, _deserialized: Any, _: Any) -> "UpstreamBody":
        """The `cls` hook of a streamed operation."""
        return cls(pipeline_response.http_response.internal_response)

    def __aiter__(self) -> "UpstreamBody":
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self.content.readany()
        except (aiohttp.ClientError, TimeoutError) as err:
            raise self.failed(err) from err
        if not chunk:
            self.ended()
            raise StopAsyncIteration
        return chunk

    def failed(self, err: Exception) -> AzureError:
        """A read's error as azure-core's generator raises it."""
        if isinstance(err, aiohttp.ClientPayloadError):
            self._response.close()
            return IncompleteReadError(err, error=err)
        if isinstance(err, aiohttp.ClientResponseError):
            return ServiceResponseError(err, error=err)
        if isinstance(err, TimeoutError):
            return ServiceResponseTimeoutError(err, error=err)
        return ServiceRequestError(err, error=err)

    def ended(self) -> None:
        """The body was read to its end."""
        self._response.close()

    async def close(self) -> None:
        self._response.close()


def _request_id() -> str:
    """The `x-ms-client-request-id` of a reply's request. azure-core makes one
    with `uuid.uuid1()` (a lock and the clock, about 1 % of the event loop's
    time per new chat); a random one from the pool serves as well."""
    return str(uuid4())


# The first line of an event the service sends, as it sends it: one lookup.
EVENT_LINES = {b"event: " + raw: name for raw, name in EVENT_NAMES.items()}


# A delta that is one piece of text and nothing else, as the service sends
# almost every one: matched on its bytes, its text taken without parsing the
# JSON around it (2 against 4 µs a delta, with `_plain_delta`). Anything else
# (another key order, annotations, several parts) is parsed as a whole.
PLAIN_DELTA = re.compile(
    rb'event: thread\.message\.delta\ndata: ?\{"id":"[^"\\]*",'
    rb'"object":"thread\.message\.delta","delta":\{"content":\[\{"index":\d+,'
    rb'"type":"text","text":\{"value":"((?:[^"\\\x00-\x1f]|\\[^\x00-\x1f])+)"'
    rb'(?:,"annotations":\[\])?\}\}\]\}\}'
)


def _parse_event(event: bytes) -> tuple[str, Any]:
    """(event name, data): the data parsed from JSON, or for a plain-text
    delta (`PLAIN_DELTA`) its `Delta`."""
    plain = PLAIN_DELTA.fullmatch(event)
    if plain is not None:
        value = plain[1]
        try:
            text = (
                value.decode() if b"\\" not in value else orjson.loads(b'"%s"' % value)
            )
        except (UnicodeDecodeError, orjson.JSONDecodeError):
            pass  # not UTF-8, or an escape JSON has not: as a whole, below
        else:
            if text:
                return "thread.message.delta", base.Delta(text)
    head, _, data = event.partition(b"\n")
    name = EVENT_LINES.get(head)
    if name is not None and data.startswith(b"data:") and b"\n" not in data:
        # The service's shape: one event line, one data line (JSON allows the
        # space after the colon).
        data = data[5:]
    else:
        raw = data = b""
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                data = line[5:]
            elif line.startswith(b"event:"):
                raw = line[6:].strip()
        name = EVENT_NAMES.get(raw) or raw.decode()
    try:
        return name, orjson.loads(data)
    except orjson.JSONDecodeError:
        return name, data.strip().decode(errors="replace")


async def _no_tool_outputs(*_: Any) -> None:
    """The SDK's submit callback, which RawEvents never calls: function calls
    are submitted by `_call_functions`."""


def _retry_after(exc: HttpResponseError) -> float | None:
    response = exc.response
    if response is None:
        return None
    headers = response.headers
    for name, scale in (("retry-after-ms", 0.001), ("x-ms-retry-after-ms", 0.001)):
        if headers.get(name):
            try:
                return float(headers[name]) * scale
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if value:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def map_error(exc: BaseException) -> BackendError:
    """Turns an SDK exception raised before streaming into a stable error."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        detail = (exc.error.message if exc.error else None) or exc.reason or ""
        if isinstance(exc, ClientAuthenticationError) and not status:
            return BackendError(
                base.UPSTREAM_AUTH, f"could not get a token: {exc.message}"
            )
        if status in (401, 403):
            return BackendError(
                base.UPSTREAM_AUTH,
                f"the agent service refused our credentials (HTTP {status}). The "
                "identity needs the Azure AI Developer and Cognitive Services User "
                "roles on the AI Services resource.",
            )
        if status == 429:
            return BackendError(
                base.RATE_LIMITED,
                "the agent service is rate limiting requests; try again shortly",
                retry_after=_retry_after(exc),
            )
        if status >= 500:
            return BackendError(
                base.UPSTREAM_UNAVAILABLE,
                f"the agent service failed (HTTP {status}): {detail}".rstrip(": "),
            )
        return BackendError(
            base.RUN_FAILED,
            f"the agent service rejected the request (HTTP {status}): {detail}",
        )
    if isinstance(exc, ClientAuthenticationError):
        return BackendError(base.UPSTREAM_AUTH, f"could not get a token: {exc.message}")
    if isinstance(
        exc, ServiceRequestError | ServiceResponseError | aiohttp.ClientError
    ):
        return BackendError(
            base.UPSTREAM_UNAVAILABLE, f"could not reach the agent service: {exc}"
        )
    if isinstance(exc, ValueError):
        # The SDK decodes every error body as JSON; an HTML error page (a proxy's
        # 502, say) surfaces as a JSON decoding error.
        return BackendError(
            base.UPSTREAM_UNAVAILABLE,
            "the agent service answered with an unreadable error",
        )
    if isinstance(exc, AzureError):
        return BackendError(base.UPSTREAM_UNAVAILABLE, f"agent service error: {exc}")
    raise exc


def _citation(annotation: dict[str, Any]) -> dict[str, Any] | None:
    kind = annotation.get("type")
    citation: dict[str, Any] = {"kind": kind, "text": annotation.get("text")}
    if kind == "url_citation":
        details = annotation.get("url_citation") or {}
        citation.update(url=details.get("url"), title=details.get("title"))
    elif kind == "file_citation":
        details = annotation.get("file_citation") or {}
        citation.update(file_id=details.get("file_id"), quote=details.get("quote"))
    else:
        return None
    return citation


def _plain_delta(delta: dict[str, Any]) -> base.Delta | None:
    """The Delta of a delta that is one piece of text and nothing else (almost
    every one), without building the list `_delta_events` gives."""
    content = delta["delta"].get("content")
    if not content or len(content) != 1:
        return None
    part = content[0]
    text = part.get("text") if part.get("type") == "text" else None
    if not text or text.get("annotations") or not text.get("value"):
        return None
    return base.Delta(text["value"])


def _delta_events(delta: dict[str, Any]) -> list[Event]:
    events: list[Event] = []
    for part in delta["delta"].get("content") or ():
        image = part.get("image_file") if part.get("type") == "image_file" else None
        if image and image.get("file_id"):
            events.append(base.FileOutput(image["file_id"], "image"))
        text = part.get("text") if part.get("type") == "text" else None
        if not text:
            continue
        if text.get("value"):
            events.append(base.Delta(text["value"]))
        for annotation in text.get("annotations") or ():
            if citation := _citation(annotation):
                events.append(base.Citation(citation))
            elif file := _file_path(annotation):
                events.append(file)
    return events


def _file_path(annotation: dict[str, Any]) -> base.FileOutput | None:
    """A code interpreter's file that the text links (``sandbox:/mnt/data/…``)."""
    file_id = (annotation.get("file_path") or {}).get("file_id")
    if annotation.get("type") != "file_path" or not file_id:
        return None
    name = (annotation.get("text") or "").rsplit("/", 1)[-1] or None
    return base.FileOutput(file_id, file_kind(name), name)


# A run step's ending status, as a tool frame's.
STEP_ENDINGS = {
    "thread.run.step.completed": "completed",
    "thread.run.step.failed": "failed",
    "thread.run.step.cancelled": "failed",
    "thread.run.step.expired": "failed",
}


def _tool_progress(call: dict[str, Any], status: str) -> base.ToolProgress:
    """A server-side tool call of a run step (or a step delta's first piece of
    it) as a ToolProgress; a code interpreter's code and logs once it ended."""
    kind = call.get("type") or "tool"
    details = call.get(kind) if isinstance(call.get(kind), dict) else {}
    name = (details.get("name") or call.get("name")) if kind in NAMED_TOOLS else None
    code = logs = None
    if kind == "code_interpreter" and status != "in_progress":
        code = details.get("input")
        outputs = details.get("outputs") or ()
        logs = "".join(o.get("logs") or "" for o in outputs if o.get("type") == "logs")
    return base.ToolProgress(
        id=call.get("id") or "",
        kind=kind,
        name=name or kind,
        status=status,
        input=code,
        output=logs or None,
    )


# Tools whose calls name what they called.
NAMED_TOOLS = frozenset({"function", "openapi", "mcp"})


def _step_tools(
    name: str, step: dict[str, Any], started: set[str]
) -> list[base.ToolProgress]:
    """The tool frames a `thread.run.step.*` event gives: each server-side call
    once when it first shows (with an id) and once when its step ends. Function
    calls are the site's to run: they come with requires_action."""
    if name == "thread.run.step.delta":
        details = (step.get("delta") or {}).get("step_details") or {}
    else:
        details = step.get("step_details") or {}
    if details.get("type") != "tool_calls":
        return []
    ending = STEP_ENDINGS.get(name)
    events = []
    for call in details.get("tool_calls") or ():
        call_id = call.get("id")
        if not call_id or call.get("type") == "function":
            continue
        if ending is not None:
            started.discard(call_id)
            events.append(_tool_progress(call, ending))
        elif call_id not in started:
            started.add(call_id)
            events.append(_tool_progress(call, "in_progress"))
    return events


ACTIVE_RUN_STATUSES = {"queued", "in_progress", "requires_action"}
# The statuses resume_reply waits through; requires_action needs us, not time.
POLLED_RUN_STATUSES = {"queued", "in_progress", "cancelling"}
# resume_reply asks for the run at once, then after this long, doubling up to
# once a second (what the SDK's create_and_process polls at): a reply picked up
# near its end finishes quickly, a long one costs one request a second. The
# relay's own time limits end the wait, so none is kept here.
RESUME_FIRST_POLL_SECONDS = 0.1
RESUME_MAX_POLL_SECONDS = 1.0

RUN_ENDED = {
    "thread.run.completed",
    "thread.run.cancelled",
    "thread.run.failed",
    "thread.run.expired",
    "thread.run.incomplete",
}


def _run_ended(status: str, run: dict[str, Any]) -> base.Completed:
    """The final event of a run that ended with `status`, or the error it ended
    with (failed, expired, incomplete)."""
    if status in ("completed", "cancelled"):
        return base.Completed(usage=run.get("usage"), cancelled=status == "cancelled")
    raise _run_failure(run)


def _tools_lost() -> BackendError:
    """A run that waits for function outputs when its producer died: who asked
    went with it, so nobody here can run them for that person."""
    return BackendError(
        base.PRODUCER_LOST,
        "the server running the agent's tools stopped before the agent had its "
        "answers; send your message again",
    )


def _error_event(data: Any) -> BackendError:
    error = data.get("error", data) if isinstance(data, dict) else {"message": data}
    if error.get("code") == "rate_limit_exceeded":
        return BackendError(base.RATE_LIMITED, error.get("message") or "rate limited")
    return BackendError(
        base.UPSTREAM_UNAVAILABLE,
        f"the agent service reported an error: {error.get('message') or error}",
    )


def _run_failure(run: dict[str, Any]) -> BackendError:
    status = run.get("status")
    error = run.get("last_error") or {}
    code = error.get("code") or status
    message = error.get("message") or ""
    if status == "incomplete":
        reason = (run.get("incomplete_details") or {}).get("reason", "unknown")
        message = message or f"the run stopped early ({reason})"
    if code == "rate_limit_exceeded":
        return model_rate_limited(message)
    return BackendError(base.RUN_FAILED, f"the agent's run {status}: {code}: {message}")


def _resumed_events(
    logged: str, messages: list[dict[str, Any]], run_id: str
) -> list[Event]:
    """What a reply whose log holds `logged` lacks of its run's `messages`.

    The run's text is its messages' joined, as their deltas were streamed, and the
    log holds its beginning. Should the two differ, the text is taken up again
    where they part (with a warning): a repeated stretch can be seen and explained,
    a gap cannot. A citation goes with the text its marker ends in: one whose
    marker ends within the shared beginning came in that text's delta and is in
    the log; any other, or one without a position, is given. So is every file
    the run made, after: the reply keeps each once.
    """
    text = ""
    annotations: list[tuple[int, dict[str, Any]]] = []
    made: list[Event] = []
    for message in messages:
        for part in message.get("content") or ():
            image = part.get("image_file") if part.get("type") == "image_file" else None
            if image and image.get("file_id"):
                made.append(base.FileOutput(image["file_id"], "image"))
            body = part.get("text") if part.get("type") == "text" else None
            if not body:
                continue
            offset = len(text)
            text += body.get("value") or ""
            annotations += [(offset, a) for a in body.get("annotations") or ()]
    kept = len(logged)
    if not text.startswith(logged):
        pairs = zip(logged, text, strict=False)
        kept = next((i for i, (a, b) in enumerate(pairs) if a != b), len(text))
    if kept < len(logged):
        logger.warning(
            "run %s: the logged reply and the service's differ from character %d "
            "of %d; resuming from there",
            run_id,
            kept,
            len(logged),
        )
    events: list[Event] = [base.Delta(text[kept:])] if text[kept:] else []
    for offset, annotation in annotations:
        end = annotation.get("end_index")
        if isinstance(end, int) and offset + end <= kept:
            continue
        if citation := _citation(annotation):
            events.append(base.Citation(citation))
        elif file := _file_path(annotation):
            made.append(file)
    # Files the log may hold already: the reply keeps each once.
    return events + made


class AzureAgentsBackend(ChatBackend):
    alias = "azure_agents"
    label = "Azure AI agent"
    resumable = True

    def __init__(self) -> None:
        self.endpoint = project_endpoint()
        self.agent_id = settings.AZURE_AI_AGENT_ID
        self.agent_name: str | None = None
        self._name_task: asyncio.Task[None] | None = None
        self._client: AgentsClient | None = None
        self._session: aiohttp.ClientSession | None = None
        self._credential: Any = None

    def configuration_problems(self) -> list[str]:
        problems = project_endpoint_problems(self.endpoint)
        if not self.agent_id:
            problems.append("set AZURE_AI_AGENT_ID")
        return problems

    def describe(self) -> dict[str, Any]:
        agent = self.agent_name or f"{self.label} {self.agent_id}".strip()
        return super().describe() | {"agent": agent}

    def client(self) -> AgentsClient:
        if self._client is None:
            problems = self.configuration_problems()
            if problems:
                raise BackendError(base.UPSTREAM_AUTH, "; ".join(problems))
            self._credential = credential()
            # Our own session: the SDK's default caps a process at 100 concurrent
            # connections, so the 101st open chat would silently queue.
            limit = settings.CHAT_UPSTREAM_MAX_CONNECTIONS
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit)
            )
            options: dict[str, Any] = {
                "transport": AioHttpTransport(
                    session=self._session, session_owner=False
                ),
                "retry_total": settings.CHAT_UPSTREAM_RETRIES,
            }
            if is_loopback(self.endpoint):
                options["authentication_policy"] = LoopbackBearerPolicy(
                    self._credential, SCOPE
                )
            self._client = AgentsClient(
                endpoint=self.endpoint, credential=self._credential, **options
            )
        return self._client

    async def _load_agent_name(self) -> None:
        try:
            agent = await self.client().get_agent(self.agent_id)
        except Exception:
            logger.info("could not read the name of agent %s", self.agent_id)
            return
        self.agent_name = agent.name or None

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        client = self.client()
        if self.agent_name is None and self._name_task is None:
            # Best effort, once: the page shows the agent's name, not its id.
            self._name_task = asyncio.create_task(self._load_agent_name())
        message = {"role": "user", "content": request.message}
        thread_id = request.thread_id
        replaced = forked = None
        seed: list[dict[str, str]] = []
        if request.rewind:
            # The thread holds a turn the conversation no longer shows: a new
            # thread with what it does show, and the old one is deleted.
            seed = [
                {"role": turn.role, "content": turn.content}
                for turn in request.history
                if turn.content
            ]
            forked, thread_id = thread_id, None
        try:
            if thread_id is not None:
                try:
                    stream = await client.runs.stream(
                        thread_id=thread_id,
                        agent_id=self.agent_id,
                        additional_messages=[message],
                        event_handler=RawEvents(),
                        cls=UpstreamBody.of,
                        request_id=_request_id(),
                    )
                except ResourceNotFoundError:
                    # The thread is gone upstream (deleted, expired): start a new one
                    # and say so in the metadata.
                    replaced, thread_id = thread_id, None
            if thread_id is None:
                stream = await self._thread_and_run(client, [*seed, message])
        except ResourceNotFoundError as exc:
            # On a thread that exists (new, or just replaced): the agent is missing.
            raise BackendError(
                base.RUN_FAILED,
                f"the agent service has no agent {self.agent_id}: {exc.message}",
            ) from exc
        except Exception as exc:
            raise map_error(exc) from exc
        if thread_id is not None:
            yield base.ThreadReady(thread_id)
        if forked:
            # The new thread exists once its run streams.
            self._forget(forked)
        tools: set[str] = set()
        # `done` events of streams that a submission of tool outputs continued.
        continued = 0
        try:
            async with stream as events:
                async for name, data in events:
                    if name == "thread.message.delta":
                        if type(data) is base.Delta:  # read on its bytes
                            yield data
                        elif (delta := _plain_delta(data)) is not None:
                            yield delta
                            delta = None
                        else:
                            for event in _delta_events(data):
                                yield event
                    elif name.startswith("thread.run.step."):
                        for event in _step_tools(name, data, tools):
                            yield event
                    elif name == "thread.run.created":
                        if thread_id is None:
                            thread_id = data["thread_id"]
                            yield base.ThreadReady(thread_id, replaced)
                        yield base.RunStarted(data["id"])
                    elif name == "thread.created" and thread_id is None:
                        thread_id = data["id"]
                        yield base.ThreadReady(thread_id, replaced)
                    elif name in RUN_ENDED:
                        yield _run_ended(name.removeprefix("thread.run."), data)
                        return
                    elif name == "thread.run.requires_action":
                        async for event in self._call_functions(
                            request, data["thread_id"], data, events
                        ):
                            yield event
                        continued += 1
                    elif name == "error":
                        raise _error_event(data)
                    elif name == "done":
                        if not continued:
                            break
                        continued -= 1
                    # Not held while the next event is awaited: a stream's
                    # life, for every open stream.
                    data = event = None
        except BackendError:
            raise
        except (IncompleteReadError, ServiceResponseError, aiohttp.ClientError) as exc:
            raise BackendError(
                base.UPSTREAM_DISCONNECTED,
                "the connection to the agent service was cut",
            ) from exc
        except HttpResponseError as exc:
            raise BackendError(
                base.UPSTREAM_DISCONNECTED,
                f"the agent service stream broke: {exc.message}",
            ) from exc
        raise BackendError(
            base.INCOMPLETE, "the agent's reply ended before the run finished"
        )

    async def _thread_and_run(
        self, client: AgentsClient, messages: list[dict[str, str]]
    ) -> AsyncAgentRunStream[RawEvents]:
        """Creates a thread holding `messages` and streams its run, in one request.

        azure-ai-agents has no streaming form of `create_thread_and_run` (its
        keyword form turns `stream` off), but its JSON-body form sends the body as
        given through the client's pipeline (auth, retries, tracing), and the
        `stream=True` keyword makes it hand back the response's bytes: the same
        event stream `runs.stream` reads. The thread's id comes with its first
        event."""
        body = {
            "assistant_id": self.agent_id,
            "thread": {"messages": messages},
            "stream": True,
        }
        chunks = await client.create_thread_and_run(
            body, stream=True, cls=UpstreamBody.of, request_id=_request_id()
        )
        return AsyncAgentRunStream(chunks, _no_tool_outputs, RawEvents())

    async def _call_functions(
        self,
        request: ReplyRequest,
        thread_id: str,
        run: dict[str, Any],
        events: RawEvents,
    ) -> AsyncIterator[Event]:
        """Runs the function calls a run waits for and submits their outputs,
        whose stream `events` then goes on with."""
        action = (run.get("required_action") or {}).get("submit_tool_outputs") or {}
        calls = [
            ToolCall(
                id=call["id"],
                name=(call.get("function") or {}).get("name", ""),
                arguments=(call.get("function") or {}).get("arguments") or "{}",
            )
            for call in action.get("tool_calls") or ()
        ]
        box = request.tools
        missing = box.unknown(calls) if box else [call.name for call in calls]
        if missing or box is None:
            await self.cancel(thread_id, run["id"])
            raise refused(missing or ["a function"])
        for call in calls:
            yield progress(call)
        results = await box.run(calls)
        for result in results:
            yield progress(result.call, result)
        outputs = [{"tool_call_id": r.call.id, "output": r.output} for r in results]
        try:
            await self.client().runs.submit_tool_outputs_stream(
                thread_id=thread_id,
                run_id=run["id"],
                tool_outputs=outputs,
                event_handler=events,
            )
        except Exception as exc:
            raise map_error(exc) from exc

    async def resume_reply(self, resumption: Resumption) -> AsyncIterator[Event]:
        """Waits for the run to end, then gives the rest of its text and its
        ending: `Completed`, or the error the stream would have ended with."""
        thread_id, run_id = resumption.thread_id, resumption.run_id
        try:
            run = await self._ended_run(thread_id, run_id)
            if run.get("status") == "requires_action":
                await self.cancel(thread_id, run_id)
                raise _tools_lost()
            messages = self.client().messages.list(
                thread_id, run_id=run_id, order="asc"
            )
            replies = [m.as_dict() async for m in messages]
        except ResourceNotFoundError as exc:
            raise await self._lost(thread_id, run_id) from exc
        except BackendError:
            raise
        except Exception as exc:
            raise map_error(exc) from exc
        replies = [m for m in replies if m.get("role") == "assistant"]
        for event in _resumed_events(resumption.text, replies, run_id):
            yield event
        yield _run_ended(run["status"], run)

    async def _ended_run(self, thread_id: str, run_id: str) -> dict[str, Any]:
        """The run once it is no longer queued, in progress or cancelling."""
        delay = RESUME_FIRST_POLL_SECONDS
        while True:
            run = (await self.client().runs.get(thread_id, run_id)).as_dict()
            if run.get("status") not in POLLED_RUN_STATUSES:
                return run
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUME_MAX_POLL_SECONDS)

    async def _lost(self, thread_id: str, run_id: str) -> BackendError:
        """Why the service no longer has a run: its thread went, or the run did."""
        try:
            await self.client().threads.get(thread_id)
        except ResourceNotFoundError:
            return BackendError(
                base.THREAD_NOT_FOUND,
                f"the agent service no longer has thread {thread_id}",
            )
        except AzureError:
            pass
        return BackendError(
            base.RUN_FAILED, f"the agent service no longer has run {run_id}"
        )

    async def file_content(self, file: base.FileOutput) -> AsyncGenerator[bytes, None]:
        try:
            chunks = await self.client().files.get_content(file.file_id)
        except ResourceNotFoundError as exc:
            raise BackendError(
                base.THREAD_NOT_FOUND, "the agent service no longer has this file"
            ) from exc
        except Exception as exc:
            raise map_error(exc) from exc
        try:
            async for chunk in chunks:
                yield chunk
        except (AzureError, aiohttp.ClientError) as exc:
            raise BackendError(
                base.UPSTREAM_DISCONNECTED, "the file's download was cut"
            ) from exc

    async def cancel(self, thread_id: str, run_id: str) -> None:
        try:
            await self.client().runs.cancel(thread_id=thread_id, run_id=run_id)
        except HttpResponseError as exc:
            # Already finished or cancelled: nothing left to stop.
            logger.info("cancel of run %s answered %s", run_id, exc.status_code)
        except AzureError as exc:
            # Best effort: the reply is stored either way; the run may go on.
            logger.warning("cancel of run %s failed: %s", run_id, exc)

    async def cancel_active(self, thread_id: str) -> None:
        try:
            runs = self.client().runs.list(thread_id, limit=1, order="desc")
            async for run in runs:
                if run.status in ACTIVE_RUN_STATUSES:
                    await self.cancel(thread_id, run.id)
                break
        except AzureError as exc:
            logger.warning("finding the active run of %s failed: %s", thread_id, exc)

    async def delete_thread(self, thread_id: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            await self.client().threads.delete(thread_id)

    def _forget(self, thread_id: str) -> None:
        """Deletes a thread a rewind replaced, without holding the reply up."""
        base.in_background(
            self.delete_thread(thread_id), f"deleting thread {thread_id}"
        )

    async def aclose(self) -> None:
        await base.close_each(self._client, self._credential, self._session)
        self._client = self._session = self._credential = None
