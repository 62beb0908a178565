"""Emulator settings: per-emulator defaults, one-shot overrides, message directives.

All three sources go through `EmulatorConfig.with_overrides`, so a value typed into
a chat message (always a string) is validated exactly like one passed from Python.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

HTTP_FAULTS = frozenset(
    {
        "http_401",
        "http_403",
        "http_404",
        "http_429",
        "http_429_retry_after",
        "http_500_json",
        "http_500_html",
    }
)
# max_tokens and content_filter end a reply the way the OpenAI protocols report a
# truncated one (response.incomplete, finish_reason); classic runs ignore them.
STREAM_FAULTS = frozenset(
    {
        "run_failed",
        "error_event",
        "disconnect",
        "hang",
        "incomplete",
        "max_tokens",
        "content_filter",
    }
)
FAULTS = HTTP_FAULTS | STREAM_FAULTS
# Server-side tools a reply can use before its text, as each protocol shapes them
# (web_search is a bing_grounding call in a classic run).
TOOLS = ("file_search", "code_interpreter", "web_search")

# "runs.create" covers both POST /threads/{id}/runs and POST /threads/runs.
RUN_CREATE = "runs.create"
RESPONSE_CREATE = "responses.create"
CHAT_COMPLETION_CREATE = "chat.completions.create"
# The call that starts a reply, one per API: a fault with no operation hits the
# next of these, whichever API the client speaks.
REPLY_OPERATIONS = frozenset({RUN_CREATE, RESPONSE_CREATE, CHAT_COMPLETION_CREATE})
OPERATIONS = REPLY_OPERATIONS | frozenset(
    {
        "agents.get",
        "threads.create",
        "threads.get",
        "threads.delete",
        "messages.create",
        "messages.list",
        "messages.get",
        "runs.list",
        "runs.get",
        "runs.cancel",
        "runs.submit_tool_outputs",
        "conversations.create",
        "conversations.get",
        "conversations.delete",
        "conversations.items.create",
        "responses.get",
        "responses.cancel",
        "files.content",
        "containers.files.content",
    }
)

# Short names for directives typed by hand: [emulator:tokens=300,interval=0.05].
ALIASES = {
    "interval": "token_interval",
    "delay": "first_token_delay",
    "after": "fault_after",
    "hold": "hold_after",
    "operation": "fault_operation",
}

DIRECTIVE_RE = re.compile(r"\[emulator:([^\]]*)\]")

_NONE_WORDS = frozenset({"", "none", "null"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


@dataclass
class EmulatorConfig:
    """How the emulator answers; every field can be overridden per request.

    `fault_after` counts the deltas sent before a stream fault strikes, and
    `hold_after` the deltas sent before the stream waits for `release()`;
    `hold_start` holds a reply before its first event (a classic run before
    `thread.run.created`), once its response headers are out.
    `fault_operation` None aims the fault at the next reply, whatever its API.
    `tools` are called, in order, before the reply's text; with `hold_tool` each
    waits for `release()` while in progress. `function_calls` (each `name` or
    `name {json arguments}`) are asked of the client at once, after the tools:
    a classic run waits in requires_action for their outputs, a response ends
    with them for a follow-up response to answer. Chat completions
    ignore all three. `image`: the reply has a chart that code interpreter drew
    (a classic message's image_file part before its text, a response's
    container_file_citation after it), served by the files endpoints.
    """

    first_token_delay: float = 0.0
    token_interval: float = 0.0
    reply: str | list[str] = "echo"
    tokens: int | None = None
    annotations: bool = False
    agent_name: str = "Emulated agent"
    model: str = "gpt-4o"
    fault: str | None = None
    fault_operation: str | None = None
    fault_after: int = 2
    retry_after: int = 1
    hold_after: int | None = None
    hold_start: bool = False
    tools: list[str] = dataclasses.field(default_factory=list)
    hold_tool: bool = False
    function_calls: list[str] = dataclasses.field(default_factory=list)
    image: bool = False

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(
                f"Unknown emulator fault {self.fault!r}; "
                f"expected one of {', '.join(sorted(FAULTS))}."
            )
        if self.fault_operation is not None and self.fault_operation not in OPERATIONS:
            raise ValueError(
                f"Unknown emulator operation {self.fault_operation!r}; "
                f"expected one of {', '.join(sorted(OPERATIONS))}."
            )
        for name in ("first_token_delay", "token_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"Emulator option {name} must be >= 0.")
        for name in ("tokens", "hold_after", "fault_after", "retry_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"Emulator option {name} must be >= 0.")
        for tool in self.tools:
            if tool not in TOOLS:
                raise ValueError(
                    f"Unknown emulator tool {tool!r}; "
                    f"expected any of {', '.join(TOOLS)}."
                )
        if not isinstance(self.reply, str) and not (
            isinstance(self.reply, list) and all(isinstance(t, str) for t in self.reply)
        ):
            raise ValueError(
                "Emulator option reply must be a string or a list of strings."
            )

    def with_overrides(self, overrides: Mapping[str, Any]) -> EmulatorConfig:
        """A validated copy with `overrides` (strings are converted) applied."""
        return dataclasses.replace(self, **coerce_overrides(overrides))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def aims_at(self, operation: str) -> bool:
        """True if `fault` strikes `operation`."""
        return targets(self.fault_operation, operation)


def targets(fault_operation: str | None, operation: str) -> bool:
    """Whether a fault (or override) aimed at `fault_operation` hits `operation`."""
    if fault_operation is None:
        return operation in REPLY_OPERATIONS
    return fault_operation == operation


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def convert_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS):
            return None
        return convert(value)

    return convert_optional


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _to_int(value: Any) -> int:
    # bool is an int subclass; refuse it so `tokens=True` is not silently 1.
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected an integer, got {value!r}")
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def _to_reply(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return [str(token) for token in value]
    raise ValueError(f"expected a string or a list of strings, got {value!r}")


def _to_tools(value: Any) -> list[str]:
    # In a directive, several tools are joined with "+": tools=file_search+web_search.
    if isinstance(value, str):
        return [tool for tool in re.split(r"[+\s]+", value.strip()) if tool]
    if isinstance(value, list | tuple):
        return [str(tool) for tool in value]
    raise ValueError(f"expected tool names, got {value!r}")


def _to_calls(value: Any) -> list[str]:
    # In a directive, several calls are joined with "+": function_calls=a+b.
    if isinstance(value, str):
        return [call.strip() for call in value.split("+") if call.strip()]
    if isinstance(value, list | tuple):
        return [str(call) for call in value]
    raise ValueError(f"expected function calls, got {value!r}")


def _to_str(value: Any) -> str:
    return str(value).strip()


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "first_token_delay": _to_float,
    "token_interval": _to_float,
    "reply": _to_reply,
    "tokens": _optional(_to_int),
    "annotations": _to_bool,
    "agent_name": _to_str,
    "model": _to_str,
    "fault": _optional(_to_str),
    "fault_operation": _optional(_to_str),
    "fault_after": _to_int,
    "retry_after": _to_int,
    "hold_after": _optional(_to_int),
    "hold_start": _to_bool,
    "tools": _to_tools,
    "hold_tool": _to_bool,
    "function_calls": _to_calls,
    "image": _to_bool,
}


def coerce_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Resolves aliases and converts values; raises ValueError naming the bad key."""
    coerced: dict[str, Any] = {}
    for key, value in overrides.items():
        name = ALIASES.get(key, key)
        convert = _CONVERTERS.get(name)
        if convert is None:
            raise ValueError(f"Unknown emulator option {key!r}.")
        try:
            coerced[name] = convert(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Bad value for emulator option {key!r}: {exc}") from exc
    return coerced


def parse_directives(text: str) -> dict[str, Any]:
    """Options from every `[emulator:key=value,...]` block in `text`, later wins."""
    options: dict[str, str] = {}
    for match in DIRECTIVE_RE.finditer(text):
        for pair in match.group(1).split(","):
            if not pair.strip():
                continue
            key, sep, value = pair.partition("=")
            if not sep:
                raise ValueError(
                    f"Emulator directive {pair.strip()!r} is not key=value."
                )
            options[key.strip()] = value.strip()
    return coerce_overrides(options)


def strip_directives(text: str) -> str:
    return DIRECTIVE_RE.sub("", text).strip()
