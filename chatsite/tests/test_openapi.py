import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RegexPattern, RoutePattern
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from chatsite import views
from posts.models import Post

UNDOCUMENTED_METHODS = {"HEAD", "OPTIONS"}


def path_template(pattern: RegexPattern | RoutePattern) -> str:
    """`^posts/(?P<post_id>[0-9]+)/?$` or `posts/<int:post_id>` as `posts/{post_id}`."""
    if isinstance(pattern, RoutePattern):
        return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(pattern))
    regex = pattern._regex.removeprefix("^").removesuffix("$").removesuffix("/?")
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex)


def api_routes(
    patterns: list[URLPattern | URLResolver], prefix: str = "/"
) -> Iterator[tuple[str, Callable[..., Any]]]:
    for entry in patterns:
        path = prefix + path_template(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from api_routes(entry.url_patterns, path)
        elif path.startswith("/api/") and entry.callback is not views.api_not_found:
            yield path, entry.callback


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    from chatsite.openapi import openapi_document

    return openapi_document()


def schema_validator(document: dict[str, Any], name: str) -> OAS31Validator:
    return OAS31Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def test_it_converts_url_patterns_to_path_templates() -> None:
    routes = dict(api_routes(get_resolver().url_patterns))

    assert {"/api/posts", "/api/posts/{post_id}", "/api/health"} <= set(routes)
    assert "/api/chat/{conversation_id}/stop" in routes


async def test_it_serves_a_valid_openapi_3_1_document(
    async_client: AsyncClient,
) -> None:
    response = await async_client.get("/api/openapi.json")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    document = response.json()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_it_documents_every_api_url(document: dict[str, Any]) -> None:
    routes = dict(api_routes(get_resolver().url_patterns))

    assert sorted(routes) == sorted(document["paths"])


def test_it_documents_every_allowed_method(document: dict[str, Any]) -> None:
    for path, view in api_routes(get_resolver().url_patterns):
        allowed = set(view.allowed_methods) - UNDOCUMENTED_METHODS
        documented = {
            method.upper()
            for method in document["paths"][path]
            if method != "parameters"
        }
        assert documented == allowed, path


def test_it_names_every_path_parameter(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        in_path = set(re.findall(r"{(\w+)}", path))
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == in_path, path


def test_it_gives_every_operation_a_unique_id(document: dict[str, Any]) -> None:
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for method, operation in item.items()
        if method != "parameters"
    ]

    assert len(ids) == len(set(ids))


def test_it_serialises_to_json(document: dict[str, Any]) -> None:
    assert orjson.loads(orjson.dumps(document)) == document


@pytest.mark.django_db(transaction=True)
async def test_it_describes_real_responses(
    async_client: AsyncClient, document: dict[str, Any]
) -> None:
    author = await User.objects.acreate(username="author")
    post = await Post.objects.acreate(
        title="Hello", body="World", author=author, published=True
    )

    page = await async_client.get("/api/posts")
    detail = await async_client.get(f"/api/posts/{post.pk}")
    health = await async_client.get("/api/health")
    error = await async_client.get("/api/posts?limit=0")

    schema_validator(document, "PostPage").validate(page.json())
    schema_validator(document, "Post").validate(detail.json())
    schema_validator(document, "Health").validate(health.json())
    schema_validator(document, "Error").validate(error.json())
