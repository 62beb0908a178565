"""The chat stream's frames: their shapes (pydantic models) and their bytes.

Every frame is `data: <one-line JSON>\nid: <n>\n\n`: the earlier chat service's
`data:` lines, so its clients keep working, with an event id to resume from. The
JSON is ASCII, as the earlier service's `json.dumps` wrote it: every other
character is a `\\uXXXX` escape, so no CR, LF, U+0085, U+2028 or U+2029 can end a
line early in any reader (some split lines on all of them), and a reader that
decodes each network read on its own never cuts a character in two.

While the agent is silent a comment line (`: keep-alive`) keeps idle
connections open through proxies. It has no blank line after it: a blank line
dispatches an event, and some clients then hand their caller an empty message.

The relay builds frames only through these models; `encode` is the one place
that turns them into bytes, and the OpenAPI document takes their JSON Schemas
from `FRAME_MODELS`.
"""

from json import dumps as _dumps
from json.encoder import encode_basestring_ascii as _ascii_string
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    model_serializer,
    model_validator,
)

KEEPALIVE = b": keep-alive\n"
# The id after the data: a client that takes an id as soon as it reads it (as
# fetch-event-source does) never asks to resume after a frame it did not get,
# unless the connection breaks between a frame's last two bytes.
_CHUNK = b'data: {"type":"chunk","content":%b}\nid: %d\n\n'
_FRAME = b"data: %b\nid: %d\n\n"


def _unless_none(field_type: Any) -> Any:
    """An optional field that is left out of the frame when it is None."""
    return Annotated[field_type | None, Field(default=None, exclude_if=_is_none)]


def _is_none(value: object) -> bool:
    return value is None


class Frame(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")


class Metadata(Frame):
    """First frame: where the reply is stored and which agent writes it."""

    type: Literal["metadata"] = "metadata"
    conversation_id: str
    thread_id: str | None
    message_id: str
    backend: str
    agent: str
    offline: bool
    thread_reset: _unless_none(bool)
    previous_thread_id: _unless_none(str)
    notice: _unless_none(str)
    # The user message the reply answers (another attempt after a regenerate).
    reply_to: _unless_none(str)


class Chunk(Frame):
    """The next piece of the reply's text."""

    type: Literal["chunk"] = "chunk"
    content: str


class Annotation(Frame):
    """A citation the agent attached to the reply: a `url_citation` carries `url`
    and `title`, a `file_citation` `file_id` and `quote` (each may be null)."""

    type: Literal["annotation"] = "annotation"
    kind: Literal["url_citation", "file_citation"]
    text: str | None
    url: str | None = None
    title: str | None = None
    file_id: str | None = None
    quote: str | None = None

    @model_serializer(mode="wrap")
    def _given_fields(self, serialize: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The fields of the citation's kind, as given, null or not.
        data = serialize(self)
        given = self.model_fields_set
        return {k: v for k, v in data.items() if k in _ALWAYS or k in given}


_ALWAYS = frozenset({"type", "kind", "text"})


class Tool(Frame):
    """A tool the agent uses, when it starts (`in_progress`) and when it ends
    (`completed` or `failed`): `kind` is the tool's type (`file_search`,
    `code_interpreter`, `web_search`, `bing_grounding`, `azure_ai_search`, `mcp`,
    `openapi`, `function`), `name` the function or MCP tool it called, else the
    kind; a code interpreter's `input` (the code) and `output` (its logs) come
    when it ends. Clients that do not know the type ignore it."""

    type: Literal["tool"] = "tool"
    id: str
    kind: str
    name: str
    status: Literal["in_progress", "completed", "failed"]
    input: _unless_none(str)
    output: _unless_none(str)


class File(Frame):
    """A file the agent made (a code interpreter's chart, say), served by this
    site at `url` to the conversation's owner: `kind` `image` is shown inline,
    `file` linked; `name` when the agent gave one."""

    type: Literal["file"] = "file"
    file_id: str
    kind: Literal["image", "file"]
    name: _unless_none(str)
    url: str


class Done(Frame):
    """The last frame of a reply that finished or was stopped."""

    type: Literal["done"] = "done"
    full_response: str
    timestamp: str
    message_id: str
    conversation_id: str
    status: Literal["complete", "cancelled"]
    usage: dict[str, Any] | None


class Error(Frame):
    """The last frame of a reply that failed; `code` is stable, `message` human."""

    type: Literal["error"] = "error"
    code: str
    message: str
    # The message again, where the earlier service's clients read it.
    error: str
    message_id: str
    retry_after: _unless_none(int | float)

    @model_validator(mode="before")
    @classmethod
    def _error_is_the_message(cls, data: Any) -> Any:
        if isinstance(data, dict) and "error" not in data:
            return {**data, "error": data.get("message")}
        return data


FRAME_MODELS: tuple[type[Frame], ...] = (
    Metadata,
    Chunk,
    Annotation,
    Tool,
    File,
    Done,
    Error,
)


def encode(event_id: int, frame: Frame) -> bytes:
    if type(frame) is Chunk:
        return encode_chunk(event_id, frame.content)
    return encode_data(event_id, dump(frame).encode())


def encode_data(event_id: int, data: bytes) -> bytes:
    """A frame whose JSON (`dump`) is `data`."""
    return _FRAME % (data, event_id)


def encode_chunk(event_id: int, text: str) -> bytes:
    """A chunk frame of `text`: the hot path, one frame per delta, so it skips
    the frame model and the generic dump."""
    return _CHUNK % (_ascii_string(text).encode(), event_id)


def dump(frame: Frame) -> str:
    """A frame's JSON, as its `data:` line carries it."""
    return _dumps(frame.model_dump(), ensure_ascii=True, separators=(",", ":"))


_ANY_FRAME: TypeAdapter[Frame] = TypeAdapter(
    Annotated[
        Metadata | Chunk | Annotation | Tool | File | Done | Error,
        Field(discriminator="type"),
    ]
)


def load(data: str | bytes) -> Frame:
    """The frame whose JSON `dump` gave."""
    return _ANY_FRAME.validate_json(data)
