"""The contract every chat backend implements.

A backend turns one user message into an async iterator of typed events:

    ThreadReady   the upstream conversation exists (always first)
    RunStarted    the upstream run/response id, once known (lets stop cancel it)
    Delta         a piece of reply text, in order
    Citation      a file or URL citation attached to the reply
    ToolProgress  a tool the agent uses (file search, code interpreter, …) started
                  or ended; any number, between the others
    FileOutput    a file the agent made, that `file_content` serves; any number
    Completed     the reply finished normally (with token usage when known)

A regenerate or an edit of the last message replaces the conversation's last turn
(`ReplyRequest.rewind`): the request's `history` is then the conversation as it is
shown before `message`, and a backend whose service keeps the conversation must
answer from exactly that, not from the thread that still holds the replaced turn.

A reply whose process died can be finished by another one: `resume_reply` gives
the events of the same upstream run after what the reply's log already holds
(its `Resumption`), for backends whose service keeps the run (`resumable`).

Function tools: when the run asks for calls of the site's functions, the backend
runs them with `request.tools` (a ToolProgress before and after), gives the
outputs back to the service and goes on streaming the same reply; a call of a
function the site lacks is `UNKNOWN_TOOL`, and the run is cancelled (or its
calls answered with an error, where the service waits for them otherwise). A
follow-up run (a response after function calls) is a new RunStarted, with the
cursor of its start when the backend resumes by cursor.

Files: a FileOutput names a file the agent made; `file_content` streams it.

Anything that goes wrong is raised as `BackendError` with one of the stable codes
below, before or during iteration; a backend never yields after raising.
Cancellation: the relay cancels the task iterating `stream_reply` and then calls
`cancel()` with the last `RunStarted` so the upstream stops generating (and
billing). Backends are created once per process and event loop, used by many
concurrent streams, and closed with `aclose()`.
"""

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from chat.tools import ToolBox

logger = logging.getLogger(__name__)

# Stable error codes (also documented in the README and the OpenAPI description).
UPSTREAM_AUTH = "upstream_auth"
THREAD_NOT_FOUND = "thread_not_found"
RATE_LIMITED = "rate_limited"
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
RUN_FAILED = "run_failed"
UPSTREAM_DISCONNECTED = "upstream_disconnected"
INCOMPLETE = "incomplete"
TIMEOUT = "timeout"
INVALID_REQUEST = "invalid_request"
UNKNOWN_TOOL = "unknown_tool"
# Not from a backend: the relay's own reasons for ending a reply early.
SERVER_SHUTDOWN = "server_shutdown"
INTERRUPTED = "interrupted"
NOT_SAVED = "not_saved"
PRODUCER_LOST = "producer_lost"


@dataclass(frozen=True, slots=True)
class ThreadReady:
    thread_id: str
    # Set when the requested thread was gone upstream and a new one replaced it.
    replaced_thread_id: str | None = None


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    # The upstream's position at the start of the run, where a run continues a
    # reply (a follow-up response after function calls): resuming from there.
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    text: str
    # The upstream's position once this piece is in (the Responses API's
    # sequence_number): re-attaching after it gives what follows.
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class Citation:
    data: dict[str, Any]
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class ToolProgress:
    """A tool call of the agent's, once when it starts and once when it ends.

    `kind` is the tool's type (`file_search`, `code_interpreter`, `web_search`,
    `bing_grounding`, `azure_ai_search`, `mcp`, `openapi`, `function`); `name` the
    function or MCP tool called, else the kind. `input` and `output` are what a
    code interpreter ran and printed, when it ended."""

    id: str
    kind: str
    name: str
    status: str  # in_progress, completed or failed
    input: str | None = None
    output: str | None = None
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class FileOutput:
    """A file the agent made (a code interpreter's chart, say): its upstream
    `file_id`, in `container_id` for a Responses container's files; `kind` is
    `image` or `file`."""

    file_id: str
    kind: str
    name: str | None = None
    container_id: str | None = None
    cursor: int | None = None


@dataclass(frozen=True, slots=True)
class Completed:
    usage: dict[str, Any] | None = None
    # True when the upstream itself reports the run cancelled (a stop that reached
    # the service from another replica, say).
    cancelled: bool = False


Event = (
    ThreadReady | RunStarted | Delta | Citation | ToolProgress | FileOutput | Completed
)


class BackendError(Exception):
    """An upstream failure, mapped to a stable `code` and a human `message`."""

    def __init__(
        self, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Turn:
    """One past message, for backends that keep no history of their own."""

    role: str
    content: str


@dataclass(slots=True)
class ReplyRequest:
    message: str
    thread_id: str | None = None
    history: list[Turn] = field(default_factory=list)
    # The site's function tools, for the caller; None: the reply may call none.
    tools: "ToolBox | None" = None
    # The message replaces the conversation's last turn (a regenerate, or an
    # edit of the last message): the thread holds a turn the conversation no
    # longer shows. `history` is then what it shows before `message`, and a
    # backend that keeps threads starts from that, not from `thread_id`.
    rewind: bool = False


@dataclass(frozen=True, slots=True)
class Resumption:
    """What a reply's log holds of an upstream run that lost its producer."""

    thread_id: str
    run_id: str
    # The cursor of the last event in the log that had one (a delta, citation,
    # tool or the run's start; None: none had one).
    cursor: int | None
    # The reply text in the log.
    text: str


class ChatBackend:
    alias: ClassVar[str] = ""
    # Shown to users: which agent answers.
    label: ClassVar[str] = ""
    offline: ClassVar[bool] = False
    # True for services that keep no conversation state: the relay then passes
    # the stored history with every request.
    needs_history: ClassVar[bool] = False
    # True when the service keeps a run going without its stream, so that
    # `resume_reply` can finish it from another process.
    resumable: ClassVar[bool] = False

    def configuration_problems(self) -> list[str]:
        """Settings that are missing or wrong; readiness fails while any exist."""
        return []

    def describe(self) -> dict[str, Any]:
        return {"backend": self.alias, "agent": self.label, "offline": self.offline}

    def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        raise NotImplementedError

    def resume_reply(self, resumption: Resumption) -> AsyncIterator[Event]:
        """The rest of a run whose stream was lost with its process: the events
        after `resumption` (no ThreadReady), ending like `stream_reply`."""
        raise BackendError(
            PRODUCER_LOST,
            "the server writing this reply stopped; send your message again",
        )

    async def file_content(self, file: "FileOutput") -> AsyncGenerator[bytes, None]:
        """The bytes of a file the agent made, streamed from the service;
        `BackendError` (`THREAD_NOT_FOUND` when it has no such file)."""
        raise BackendError(THREAD_NOT_FOUND, "this agent makes no files")
        yield b""  # pragma: no cover

    async def cancel(self, thread_id: str, run_id: str) -> None:
        """Stops an upstream run; must not raise if it already finished."""

    async def cancel_active(self, thread_id: str) -> None:
        """Stops the thread's run in progress, whose id never reached us (the
        client left before the service named it); must not raise."""

    async def delete_thread(self, thread_id: str) -> None:
        """Deletes upstream state for a conversation, where the service keeps any."""

    async def aclose(self) -> None:
        """Releases connections and credentials."""


async def close_each(*resources: Any) -> None:
    """Closes, in order, each of a backend's clients and credentials that was
    opened (is not None): what `aclose` does in most backends."""
    for resource in resources:
        if resource is not None:
            await resource.close()


# Work a backend does after a reply's events (deleting the thread a rewind
# replaced): kept referenced until done, its failure logged.
_BACKGROUND: set[asyncio.Task[None]] = set()


def in_background(work: Coroutine[Any, Any, None], what: str) -> None:
    async def run() -> None:
        try:
            await work
        except Exception:
            logger.warning("%s failed", what, exc_info=True)

    task = asyncio.create_task(run())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
