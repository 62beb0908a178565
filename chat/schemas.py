"""The chat API's request bodies."""

import uuid
from typing import Annotated, Any, ClassVar

from django.conf import settings
from pydantic import BeforeValidator, ConfigDict, Field
from pydantic_core import ErrorDetails

from chat.backends.base import INVALID_REQUEST
from chatsite.api import JsonBody, Text

THREAD_ID = "^[A-Za-z0-9_-]{1,200}$"
# A page's cursor in the conversation list: the updated_at (in seconds and
# microseconds since the epoch) and id of the conversation the previous page
# ended with. Any string of this form reads as a time and an id.
CURSOR_PATTERN = "([0-9]{1,11})\\.([0-9]{6})-([0-9a-f]{32})"
# Conversation.title's max_length.
TITLE_CHARS = 200
# How a conversation id is written; any form uuid.UUID() reads is accepted.
CANONICAL_UUID = "^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$"


def _max_message_chars() -> int:
    return settings.CHAT_MAX_MESSAGE_CHARS


def _uuid(value: Any) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(str(value))


class ChatRequest(JsonBody):
    """A message for the agent: a new conversation, or the next message of
    `conversation_id` (or of `thread_id`, which may also be a conversation id, as
    the earlier service had them interchangeable). Other keys are ignored.

    `edit` names the conversation's last user message, which `message`
    replaces: that message and its replies are kept, superseded, and the reply
    answers `message` in their place. With `edit`, the conversation may be left
    out: it is the edited message's."""

    model_config = ConfigDict(extra="ignore")
    # The first problem alone, named in `error`, as chat clients have always had it.
    first_problem_only = True
    error_code = INVALID_REQUEST

    message: Annotated[str, Text(needs_text=True, max_length=_max_message_chars)]
    thread_id: Annotated[str, Field(pattern=THREAD_ID)] | None = None
    conversation_id: Annotated[
        Annotated[uuid.UUID, Field(json_schema_extra={"pattern": CANONICAL_UUID})]
        | None,
        BeforeValidator(_uuid),
    ] = None
    # false: the whole reply as one JSON body instead of a stream.
    stream: bool | None = None
    edit: Annotated[
        Annotated[uuid.UUID, Field(json_schema_extra={"pattern": CANONICAL_UUID})]
        | None,
        BeforeValidator(_uuid),
    ] = None

    # Each field's message for whatever is wrong with it, but NUL and length.
    FIELD_ERRORS: ClassVar[dict[str, str]] = {
        "message": "message must be a non-empty string",
        "thread_id": "thread_id is not a valid thread id",
        "conversation_id": "conversation_id is not a valid UUID",
        "stream": "stream must be true or false",
        "edit": "edit is not a valid message id",
    }

    @classmethod
    def error_message(cls, error: ErrorDetails) -> str:
        name = str(error["loc"][0])
        if error["type"] in ("nul", "too_long"):
            return f"{name} {error['msg']}"
        return cls.FIELD_ERRORS[name]


class ConversationPatch(JsonBody):
    """A conversation's new title (PATCH /api/conversations/<id>)."""

    error_code = INVALID_REQUEST

    title: Annotated[
        str,
        Text(strip=True, needs_text=True, min_length=1, max_length=TITLE_CHARS),
        Field(description="Stored without leading and trailing whitespace"),
    ]


class RegenerateRequest(JsonBody):
    """Another reply to the conversation's last message (the body may be left
    out): `"stream": false` asks for the whole reply as one JSON body."""

    error_code = INVALID_REQUEST

    stream: bool | None = None
