"""The OpenAPI 3.1 description of every JSON endpoint under /api/."""

from functools import cache
from typing import Any

from django.conf import settings


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


ERRORS = {
    "400": _error("Malformed JSON or invalid fields"),
    "401": _error("Authentication required, or the API key is invalid or revoked"),
    "403": _error("Missing permission, or CSRF check failed for a session write"),
    "404": _error("Not found"),
    "405": _error("Method not allowed (see the Allow header)"),
    "413": _error("Request body too large"),
    "415": _error("Request body is not JSON"),
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: ERRORS[code] for code in codes}


# What the API refuses in text: NUL anywhere (PostgreSQL text cannot hold it) and,
# where a value must not be blank, nothing but the whitespace str.strip() removes.
_SPACE = (
    "\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680"
    "\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NO_NUL = "^[^\\u0000]*$"
NOT_BLANK = f"^[^\\u0000]*[^\\u0000{_SPACE}][^\\u0000]*$"
# A post title: 1 to 200 characters once stripped, any whitespace around them.
TITLE = (
    f"^[{_SPACE}]*[^\\u0000{_SPACE}]"
    f"([^\\u0000]{{0,198}}[^\\u0000{_SPACE}])?[{_SPACE}]*$"
)
THREAD_ID = "^[A-Za-z0-9_-]{1,200}$"
# `format` alone is an annotation in JSON Schema 2020-12; a pattern is asserted.
UUID = {
    "type": "string",
    "format": "uuid",
    "pattern": "^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}$",
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

SCHEMAS: dict[str, Any] = {
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
    "PostInput": {
        "type": "object",
        "required": ["title", "body"],
        "additionalProperties": False,
        "properties": {
            "title": {
                "type": "string",
                "pattern": TITLE,
                "description": "At most 200 characters; stored without leading "
                "and trailing whitespace",
            },
            "body": {"type": "string", "minLength": 1, "pattern": NO_NUL},
            "published": {"type": "boolean"},
        },
    },
    "PostPatch": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "pattern": TITLE},
            "body": {"type": "string", "minLength": 1, "pattern": NO_NUL},
            "published": {"type": "boolean"},
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
    "ChatRequest": {
        "type": "object",
        "required": ["message"],
        "properties": {
            # maxLength is CHAT_MAX_MESSAGE_CHARS, set in openapi_document().
            "message": {"type": "string", "pattern": NOT_BLANK},
            "thread_id": {"type": ["string", "null"], "pattern": THREAD_ID},
            "conversation_id": {**UUID, "type": ["string", "null"]},
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
    "ChatFrame": {
        "oneOf": [
            {
                "type": "object",
                "required": [
                    "type",
                    "conversation_id",
                    "thread_id",
                    "message_id",
                    "backend",
                    "agent",
                    "offline",
                ],
                "properties": {
                    "type": {"const": "metadata"},
                    "conversation_id": {"type": "string", "format": "uuid"},
                    "thread_id": {"type": ["string", "null"]},
                    "message_id": {"type": "string", "format": "uuid"},
                    "backend": {"type": "string"},
                    "agent": {"type": "string"},
                    "offline": {"type": "boolean"},
                    "thread_reset": {"const": True},
                    "previous_thread_id": {"type": "string"},
                    "notice": {"type": "string"},
                },
            },
            {
                "type": "object",
                "required": ["type", "content"],
                "properties": {
                    "type": {"const": "chunk"},
                    "content": {"type": "string"},
                },
            },
            {
                "type": "object",
                "required": ["type", "kind"],
                "properties": {
                    "type": {"const": "annotation"},
                    "kind": {"enum": ["url_citation", "file_citation"]},
                    "text": {"type": ["string", "null"]},
                },
            },
            {
                "type": "object",
                "required": [
                    "type",
                    "full_response",
                    "timestamp",
                    "message_id",
                    "conversation_id",
                    "status",
                    "usage",
                ],
                "properties": {
                    "type": {"const": "done"},
                    "full_response": {"type": "string"},
                    "timestamp": {"type": "string", "format": "date-time"},
                    "message_id": {"type": "string", "format": "uuid"},
                    "conversation_id": {"type": "string", "format": "uuid"},
                    "status": {"enum": ["complete", "cancelled"]},
                    "usage": {"type": ["object", "null"]},
                },
            },
            {
                "type": "object",
                "required": ["type", "code", "message", "message_id"],
                "properties": {
                    "type": {"const": "error"},
                    "code": {
                        "enum": [
                            "upstream_auth",
                            "rate_limited",
                            "upstream_unavailable",
                            "run_failed",
                            "upstream_disconnected",
                            "incomplete",
                            "timeout",
                            "server_shutdown",
                        ]
                    },
                    "message": {"type": "string"},
                    "message_id": {"type": "string", "format": "uuid"},
                    "retry_after": {"type": "number"},
                },
            },
        ]
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
            "created_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": ["string", "null"], "format": "date-time"},
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


def _links(target: str, *operations: str) -> dict[str, Any]:
    """OpenAPI links passing an id from a response to operations on that resource."""
    parameter = "post_id" if "Post" in operations[0] else "conversation_id"
    return {
        operation: {"operationId": operation, "parameters": {parameter: target}}
        for operation in operations
    }


# A created post can then be read, replaced, patched and deleted; a listed
# conversation read, stopped and deleted.
POST_LINKS = _links(
    "$response.body#/id", "getPost", "replacePost", "patchPost", "deletePost"
)
CONVERSATION_LINKS = _links(
    "$response.body#/results/0/id",
    "getConversation",
    "stopChat",
    "deleteConversation",
)

SSE_DESCRIPTION = """\
Server-Sent Events, one JSON object per `data:` line, every frame with an `id:`
(monotonic per reply). Frame types: `metadata` (first: conversation_id, thread_id,
message_id, backend), `chunk` (`content`: text delta), `annotation` (a citation),
`done` (`full_response`, `timestamp`, `message_id`, `usage`, `status`: complete or
cancelled) and `error` (`code`, `message`, optional `retry_after`). Comment frames
`: keep-alive` are sent while the upstream is silent. Error codes: upstream_auth,
rate_limited, upstream_unavailable, run_failed, upstream_disconnected, incomplete,
timeout, server_shutdown."""


@cache
def openapi_document() -> dict[str, Any]:
    json_body = lambda name: {  # noqa: E731
        "required": True,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    chat_request = SCHEMAS["ChatRequest"]
    message = {
        **chat_request["properties"]["message"],
        "maxLength": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    schemas = {
        **SCHEMAS,
        "ChatRequest": {
            **chat_request,
            "properties": {**chat_request["properties"], "message": message},
        },
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
                            ("q", {"type": "string", "pattern": NO_NUL}),
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
                        "200": {
                            "description": "The reply: an SSE stream, or one JSON "
                            "body when the request prefers application/json",
                            "content": {
                                # OpenAPI 3.1: the schema of one event.
                                "text/event-stream": {"schema": _ref("ChatEvent")},
                                "application/json": {"schema": _ref("ChatReply")},
                            },
                        },
                        **_errors("400", "401", "403", "404", "413", "415"),
                        "409": _error(
                            "A reply is already streaming in this conversation"
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
                        **_errors("403", "404"),
                        "409": _error("Nothing is streaming in this conversation"),
                    },
                },
            },
            "/api/conversations": {
                "get": {
                    "operationId": "listConversations",
                    "summary": "The caller's conversations, newest first",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "results": {
                                        "type": "array",
                                        "items": _ref("Conversation"),
                                    }
                                },
                            },
                            "Conversations",
                        )
                        | {"links": CONVERSATION_LINKS}
                    },
                }
            },
            "/api/conversations/{conversation_id}": {
                "parameters": [CONVERSATION_ID],
                "get": {
                    "operationId": "getConversation",
                    "responses": {
                        "200": _json(_ref("Conversation"), "With its messages"),
                        **_errors("404"),
                    },
                },
                "delete": {
                    "operationId": "deleteConversation",
                    "responses": {
                        "204": {"description": "Deleted"},
                        **_errors("403", "404"),
                    },
                },
            },
        },
    }
