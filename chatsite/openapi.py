"""The OpenAPI 3.1 description of every JSON endpoint under /api/.

Request bodies and SSE frames are described by the pydantic models that validate
and build them; responses written by `to_dict()` and the paths are described here.
"""

from functools import cache
from typing import Annotated, Any

from django.conf import settings
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from chat.frames import FRAME_MODELS
from chat.schemas import (
    CURSOR_PATTERN,
    ChatRequest,
    ConversationPatch,
    RegenerateRequest,
)
from chatsite.api import Text
from posts.schemas import PostInput, PostPatch

REF = "#/components/schemas/{model}"
REQUEST_MODELS = (
    PostInput,
    PostPatch,
    ChatRequest,
    ConversationPatch,
    RegenerateRequest,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


ERRORS = {
    "400": _error("Malformed JSON or invalid fields"),
    "401": _error(
        "Authentication required (CHAT_REQUIRE_LOGIN for chat), or the API key is "
        "invalid or revoked, or the ingress's sign-in cannot be read"
    ),
    "403": _error("Missing permission, or CSRF check failed for a session write"),
    "404": _error("Not found"),
    "405": _error("Method not allowed (see the Allow header)"),
    "413": _error("Request body too large"),
    "415": _error("Request body is not JSON"),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: ERRORS[code] for code in codes}


def _streamed_reply() -> dict[str, Any]:
    """The 200 of an operation that starts a reply (a message, a regenerate)."""
    return {
        "description": "The reply: an SSE stream, or one JSON body when the "
        "request prefers application/json",
        "content": {
            # OpenAPI 3.1: the schema of one event.
            "text/event-stream": {"schema": _ref("ChatEvent")},
            "application/json": {"schema": _ref("ChatReply")},
        },
    }


POST_ID = {
    "name": "post_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
CONVERSATION_ID = {
    "name": "conversation_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}

# What `to_dict()` and the views write.
RESPONSES: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string"},
            "fields": {
                "type": "object",
                "additionalProperties": {"type": "array", "items": {"type": "string"}},
            },
            "retry_after": {"type": "number"},
        },
    },
    "Post": {
        "type": "object",
        "required": ["id", "title", "body", "author", "published", "created_at"],
        "properties": {
            "id": {"type": "integer"},
            "title": {"type": "string", "maxLength": 200},
            "body": {"type": "string"},
            "author": {"type": "string"},
            "published": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
        },
    },
    "PostPage": {
        "type": "object",
        "required": ["count", "limit", "offset", "results"],
        "properties": {
            "count": {"type": "integer"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next": {"type": ["string", "null"]},
            "previous": {"type": ["string", "null"]},
            "results": {"type": "array", "items": _ref("Post")},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "service", "version"],
        "properties": {
            "status": {"const": "healthy"},
            "service": {"const": "chatsite"},
            "version": {"type": "string"},
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"enum": ["ready", "unavailable"]},
            "checks": {"type": "object"},
            "failed": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ChatEvent": {
        "type": "object",
        "description": "One Server-Sent Event of a reply; `data` is one JSON frame.",
        "required": ["id", "data"],
        "properties": {
            "event": {"const": "message"},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _ref("ChatFrame"),
            },
        },
    },
    "ChatReply": {
        "type": "object",
        "description": "Non-streaming reply (sent with Accept: application/json).",
        "required": ["conversation_id", "message_id", "status", "full_response"],
        "properties": {
            "conversation_id": {"type": "string", "format": "uuid"},
            "thread_id": {"type": ["string", "null"]},
            "message_id": {"type": "string", "format": "uuid"},
            "status": {"enum": ["complete", "cancelled", "interrupted", "failed"]},
            "full_response": {"type": "string"},
            "usage": {"type": ["object", "null"]},
            "annotations": {"type": "array", "items": {"type": "object"}},
            "tools": {
                "type": "array",
                "description": "Each tool call's last `tool` frame, without type",
                "items": {"type": "object"},
            },
            "files": {
                "type": "array",
                "description": "The `file` frames of the files the reply made",
                "items": {"type": "object"},
            },
            "timestamp": {"type": "string", "format": "date-time"},
            "error": {"type": ["object", "null"]},
        },
    },
    "Message": {
        "type": "object",
        "required": ["id", "role", "content", "status", "created_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "role": {"enum": ["user", "assistant"]},
            "content": {"type": "string"},
            "status": {"enum": ["complete", "cancelled", "interrupted", "failed"]},
            "error_code": {"type": "string"},
            "error_message": {"type": "string"},
            "usage": {"type": ["object", "null"]},
            "annotations": {"type": "array", "items": {"type": "object"}},
            "reply_to": {
                "type": ["string", "null"],
                "format": "uuid",
                "description": "A reply: the user message it answers",
            },
            "attempt": {
                "type": "integer",
                "minimum": 1,
                "description": "A reply: which attempt at answering `reply_to` "
                "(regenerate adds one); the latest is the one the agent sees",
            },
            "attempts": {"type": "integer", "minimum": 1},
            "tools": {
                "type": "array",
                "description": "Each tool call's last `tool` frame, without type",
                "items": {"type": "object"},
            },
            "files": {
                "type": "array",
                "description": "The `file` frames of the files the reply made",
                "items": {"type": "object"},
            },
            "created_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "ConversationPage": {
        "type": "object",
        "required": ["results", "next"],
        "properties": {
            "results": {"type": "array", "items": _ref("Conversation")},
            "next": {
                "type": ["string", "null"],
                "description": "The next page's URL (with its `cursor`), or null",
            },
        },
    },
    "Conversation": {
        "type": "object",
        "required": ["id", "title", "backend", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "title": {"type": "string"},
            "backend": {"type": "string"},
            "thread_id": {"type": ["string", "null"]},
            "streaming": {"type": "boolean"},
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "messages": {"type": "array", "items": _ref("Message")},
        },
    },
}


class _ComponentSchemas(GenerateJsonSchema):
    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def _model_schemas(
    models: tuple[type[BaseModel], ...], suffix: str = ""
) -> dict[str, Any]:
    """Each model's JSON Schema, named after it (plus `suffix`), with the models
    it uses, all referring to each other as components."""
    _, top = models_json_schema(
        [(model, "validation") for model in models],
        ref_template=REF.replace("{model}", "{model}" + suffix),
        schema_generator=_ComponentSchemas,
    )
    return {name + suffix: schema for name, schema in top["$defs"].items()}


def _frame_schemas() -> dict[str, Any]:
    """One component per SSE frame model, and `ChatFrame`, any one of them by
    its `type`.

    A frame is described by what its model accepts, which is what it sends: a
    custom serializer leaves nothing to read in the serialization schema. Its
    `type` has a default, but every frame carries it.
    """
    frames = _model_schemas(FRAME_MODELS, suffix="Frame")
    for frame in frames.values():
        others = [name for name in frame.get("required", ()) if name != "type"]
        frame["required"] = ["type", *others]
    types = {
        model.model_fields["type"].default: REF.format(model=f"{model.__name__}Frame")
        for model in FRAME_MODELS
    }
    chat_frame = {
        "oneOf": [{"$ref": ref} for ref in types.values()],
        "discriminator": {"propertyName": "type", "mapping": types},
    }
    return {**frames, "ChatFrame": chat_frame}


def _links(target: str, *operations: str) -> dict[str, Any]:
    """OpenAPI links passing an id from a response to operations on that resource."""
    parameter = "post_id" if "Post" in operations[0] else "conversation_id"
    return {
        operation: {"operationId": operation, "parameters": {parameter: target}}
        for operation in operations
    }


# A created post can then be read, replaced, patched and deleted; a listed
# conversation read, renamed, stopped and deleted.
POST_LINKS = _links(
    "$response.body#/id", "getPost", "replacePost", "patchPost", "deletePost"
)
CONVERSATION_LINKS = _links(
    "$response.body#/results/0/id",
    "getConversation",
    "renameConversation",
    "regenerateReply",
    "stopChat",
    "deleteConversation",
)

SSE_DESCRIPTION = """\
Server-Sent Events, one JSON object per `data:` line, every frame with an `id:`
(monotonic per reply). Frame types: `metadata` (first: conversation_id, thread_id,
message_id, backend; reply_to, the user message answered), `chunk` (`content`:
text delta), `annotation` (a citation), `tool` (a tool call of the agent's),
`done` (`full_response`, `timestamp`, `message_id`, `usage`, `status`: complete
or cancelled) and `error` (`code`, `message`, optional `retry_after`). Comment
frames `: keep-alive` are sent while the upstream is silent. Error codes:
upstream_auth, rate_limited, upstream_unavailable, run_failed,
upstream_disconnected, incomplete, timeout, server_shutdown.

`edit: <id of the conversation's last user message>` replaces that message and
its replies (kept, superseded) with `message`: the agent then sees the
conversation as it is shown. POST /api/conversations/{id}/regenerate answers
the last message again instead."""


@cache
def openapi_document() -> dict[str, Any]:
    json_body = lambda name: {  # noqa: E731
        "required": True,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    schemas = {
        **RESPONSES,
        **_model_schemas(REQUEST_MODELS),
        **_frame_schemas(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatsite API",
            "version": settings.VERSION,
            "description": "Posts, health and streaming chat.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
        },
        "paths": {
            "/api/health": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: no database access",
                    "responses": {"200": _json(_ref("Health"), "Alive")},
                }
            },
            "/api/health/ready": {
                "get": {
                    "operationId": "ready",
                    "summary": "Readiness: database, cache and chat backend checks",
                    "responses": {
                        "200": _json(_ref("Readiness"), "Ready"),
                        "503": _json(_ref("Readiness"), "A check failed"),
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
                }
            },
            "/api/posts": {
                "get": {
                    "operationId": "listPosts",
                    "summary": "Published posts (plus own drafts; all for editors)",
                    # An empty value counts as absent: `?limit=&q=` is the default.
                    "parameters": [
                        {"name": n, "in": "query", "schema": s, "allowEmptyValue": True}
                        for n, s in (
                            (
                                "limit",
                                {"type": "integer", "minimum": 1, "maximum": 100},
                            ),
                            (
                                "offset",
                                {"type": "integer", "minimum": 0, "maximum": 10**12},
                            ),
                            (
                                "page",
                                {"type": "integer", "minimum": 1, "maximum": 10**9},
                            ),
                            ("q", TypeAdapter(Annotated[str, Text()]).json_schema()),
                        )
                    ],
                    "responses": {
                        "200": _json(_ref("PostPage"), "A page of posts"),
                        **_errors("400"),
                    },
                },
                "post": {
                    "operationId": "createPost",
                    "security": [{"apiKey": []}, {"session": []}],
                    "requestBody": json_body("PostInput"),
                    "responses": {
                        "201": {**_json(_ref("Post"), "Created"), "links": POST_LINKS},
                        **_errors("400", "401", "403", "413", "415"),
                    },
                },
            },
            "/api/posts/{post_id}": {
                "parameters": [POST_ID],
                "get": {
                    "operationId": "getPost",
                    "responses": {
                        "200": _json(_ref("Post"), "The post"),
                        **_errors("404"),
                    },
                },
                "put": {
                    "operationId": "replacePost",
                    "security": [{"apiKey": []}, {"session": []}],
                    "requestBody": json_body("PostInput"),
                    "responses": {
                        "200": _json(_ref("Post"), "Replaced"),
                        **_errors("400", "401", "403", "404", "413", "415"),
                    },
                },
                "patch": {
                    "operationId": "patchPost",
                    "security": [{"apiKey": []}, {"session": []}],
                    "requestBody": json_body("PostPatch"),
                    "responses": {
                        "200": _json(_ref("Post"), "Updated"),
                        **_errors("400", "401", "403", "404", "413", "415"),
                    },
                },
                "delete": {
                    "operationId": "deletePost",
                    "security": [{"apiKey": []}, {"session": []}],
                    "responses": {
                        "204": {"description": "Deleted"},
                        **_errors("401", "403", "404"),
                    },
                },
            },
            "/api/chat": {
                "post": {
                    "operationId": "chat",
                    "summary": "Send a message; the reply streams as SSE",
                    "description": SSE_DESCRIPTION,
                    "requestBody": json_body("ChatRequest"),
                    "responses": {
                        "200": _streamed_reply(),
                        **_errors("400", "401", "403", "404", "413", "415"),
                        "409": _error(
                            "A reply is already streaming in this conversation "
                            "(conversation_busy), or `edit` does not name the "
                            "last message of one of the caller's conversations "
                            "(not_last_message)"
                        ),
                        "429": _error("Rate limited (see Retry-After)"),
                    },
                }
            },
            "/api/chat/{conversation_id}/stop": {
                "parameters": [CONVERSATION_ID],
                "post": {
                    "operationId": "stopChat",
                    "summary": "Stop the reply streaming in this conversation",
                    "responses": {
                        "200": _json({"type": "object"}, "Stop requested"),
                        **_errors("401", "403", "404"),
                        "409": _error("Nothing is streaming in this conversation"),
                    },
                },
            },
            "/api/conversations": {
                "get": {
                    "operationId": "listConversations",
                    "summary": "The caller's conversations, newest first, a "
                    "page at a time",
                    "description": "`q` keeps those whose title or shown "
                    "messages contain it (case-insensitive); `next` is the "
                    "following page's URL.",
                    # An empty value counts as absent, as for posts.
                    "parameters": [
                        {"name": n, "in": "query", "schema": s, "allowEmptyValue": True}
                        for n, s in (
                            (
                                "limit",
                                {"type": "integer", "minimum": 1, "maximum": 200},
                            ),
                            (
                                "q",
                                TypeAdapter(
                                    Annotated[str, Text(max_length=200)]
                                ).json_schema(),
                            ),
                            (
                                "cursor",
                                {
                                    "type": "string",
                                    "pattern": f"^{CURSOR_PATTERN}$",
                                    "description": "From a page's `next` link",
                                },
                            ),
                        )
                    ],
                    "responses": {
                        "200": _json(_ref("ConversationPage"), "Conversations")
                        | {"links": CONVERSATION_LINKS},
                        **_errors("400", "401"),
                    },
                }
            },
            "/api/conversations/{conversation_id}": {
                "parameters": [CONVERSATION_ID],
                "get": {
                    "operationId": "getConversation",
                    "responses": {
                        "200": _json(_ref("Conversation"), "With its messages"),
                        **_errors("401", "404"),
                    },
                },
                "patch": {
                    "operationId": "renameConversation",
                    "summary": "Rename the conversation",
                    "requestBody": json_body("ConversationPatch"),
                    "responses": {
                        "200": _json(_ref("Conversation"), "Renamed"),
                        **_errors("400", "401", "403", "404", "413", "415"),
                    },
                },
                "delete": {
                    "operationId": "deleteConversation",
                    "responses": {
                        "204": {"description": "Deleted"},
                        **_errors("401", "403", "404"),
                    },
                },
            },
            "/api/conversations/{conversation_id}/regenerate": {
                "parameters": [CONVERSATION_ID],
                "post": {
                    "operationId": "regenerateReply",
                    "summary": "Another reply to the conversation's last message",
                    "description": "Streams as POST /api/chat does (the same "
                    "frames, Idempotency-Key and limits). The reply is stored as "
                    "another attempt beside the earlier ones; the latest is the "
                    "one the agent sees from then on.",
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {"schema": _ref("RegenerateRequest")}
                        },
                    },
                    "responses": {
                        "200": _streamed_reply(),
                        **_errors("400", "401", "403", "404", "413", "415"),
                        "409": _error(
                            "A reply is already streaming in this conversation"
                        ),
                        "429": _error("Rate limited (see Retry-After)"),
                    },
                },
            },
            "/api/conversations/{conversation_id}/stream": {
                "parameters": [
                    CONVERSATION_ID,
                    {
                        "name": "last_event_id",
                        "in": "query",
                        "required": False,
                        "description": "Resume after this frame id (as the "
                        "Last-Event-ID header does)",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,9}$"},
                    },
                ],
                "get": {
                    "operationId": "resumeChat",
                    "summary": "The conversation's reply in flight, or its last "
                    "one, as an EventSource stream",
                    "description": "The frames after `Last-Event-ID` (header) or "
                    "`last_event_id`, then live until the final frame. A reply "
                    "that finished more than CHAT_REPLAY_TTL_SECONDS ago comes "
                    "from the database: metadata, its text as one chunk, and its "
                    "final frame.",
                    "responses": {
                        "200": {
                            "description": "The reply as an SSE stream",
                            "content": {
                                "text/event-stream": {"schema": _ref("ChatEvent")}
                            },
                        },
                        **_errors("400", "401", "404"),
                        "409": _error(
                            "The reply is streaming on another server that keeps "
                            "its frames"
                        ),
                    },
                },
            },
            "/api/conversations/{conversation_id}/files/{file_id}": {
                "parameters": [
                    CONVERSATION_ID,
                    {
                        "name": "file_id",
                        "in": "path",
                        "required": True,
                        "description": "The `file_id` of one of the conversation's "
                        "`file` frames",
                        "schema": {"type": "string", "maxLength": 200},
                    },
                ],
                "get": {
                    "operationId": "getConversationFile",
                    "summary": "A file the agent made in this conversation (a code "
                    "interpreter's image or file)",
                    "description": "Streamed from the agent service to the "
                    "conversation's owner, for the files its replies made only. "
                    "Images are served inline with their type (PNG when the name "
                    "tells none), other files as attachments; `Cache-Control: "
                    "private`, `X-Content-Type-Options: nosniff`. A file over 20 "
                    "MiB is broken off (502 `file_too_large` when its first piece "
                    "already is over).",
                    "responses": {
                        "200": {
                            "description": "The file's bytes",
                            "content": {
                                "image/*": {"schema": {"type": "string"}},
                                "application/octet-stream": {
                                    "schema": {"type": "string"}
                                },
                            },
                        },
                        **_errors("401", "404"),
                        "502": _error("The agent service could not give the file"),
                    },
                },
            },
        },
    }
