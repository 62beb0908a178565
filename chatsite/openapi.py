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
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "body": {"type": "string", "minLength": 1},
            "published": {"type": "boolean"},
        },
    },
    "PostPatch": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 200},
            "body": {"type": "string", "minLength": 1},
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
            "message": {"type": "string", "minLength": 1},
            "thread_id": {"type": ["string", "null"]},
            "conversation_id": {"type": ["string", "null"], "format": "uuid"},
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
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "messages": {"type": "array", "items": _ref("Message")},
        },
    },
}

SSE_DESCRIPTION = """\
Server-Sent Events, one JSON object per `data:` line, every frame with an `id:`
(monotonic per reply). Frame types: `metadata` (first: conversation_id, thread_id,
message_id, backend), `chunk` (`content`: text delta), `annotation` (a citation),
`done` (`full_response`, `timestamp`, `message_id`, `usage`, `status`: complete or
cancelled) and `error` (`code`, `message`, optional `retry_after`). Comment frames
`: keep-alive` are sent while the upstream is silent. Error codes: upstream_auth,
rate_limited, upstream_unavailable, run_failed, upstream_disconnected, incomplete,
timeout."""


@cache
def openapi_document() -> dict[str, Any]:
    json_body = lambda name: {  # noqa: E731
        "required": True,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatsite API",
            "version": settings.VERSION,
            "description": "Posts, health and streaming chat.",
        },
        "components": {
            "schemas": SCHEMAS,
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
                    "parameters": [
                        {"name": n, "in": "query", "schema": s}
                        for n, s in (
                            (
                                "limit",
                                {"type": "integer", "minimum": 1, "maximum": 100},
                            ),
                            ("offset", {"type": "integer", "minimum": 0}),
                            ("page", {"type": "integer", "minimum": 1}),
                            ("q", {"type": "string"}),
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
                        "201": _json(_ref("Post"), "Created"),
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
                                "text/event-stream": {"schema": {"type": "string"}},
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
