"""The chat page at `/`: rendering, CSP, no inline code, static files that resolve."""

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
from django.conf import settings
from django.http import HttpResponse
from django.test import AsyncClient

from chat.backends.base import ChatBackend
from chatsite import settings as project_settings

BASE_DIR = Path(__file__).resolve().parents[2]
# A module's static imports; a browser resolves only relative specifiers (the
# keyword lists of minified grammars hold "import" followed by other strings).
IMPORT = re.compile(r"""\bimport\s*(?:[\w*{}\s,]+from\s*)?["'](\.{0,2}/[^"']+)["']""")

# Async views reach the database from another thread, so no wrapping transaction.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _collected(collected_static: None) -> None:
    """Tests run with DEBUG off: {% static %} needs the manifest, and ServeStatic
    serves STATIC_ROOT, so both need collectstatic first (once a session)."""


@pytest.fixture
def manifest_storage(settings) -> None:
    """Production's static storage (hashed names) instead of the tests' plain one."""
    settings.STORAGES = project_settings.STORAGES


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.script_text.append(data)


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


class NamedAgentBackend(ChatBackend):
    alias = "named"
    label = "Research agent"
    offline = False


async def get_page(client: AsyncClient) -> tuple[HttpResponse, str]:
    response = await client.get("/")
    assert response.status_code == 200
    return response, response.content.decode()


async def test_it_renders_the_chat_page(async_client: AsyncClient) -> None:
    response, html = await get_page(async_client)
    assert response["Content-Type"] == "text/html; charset=utf-8"
    tags = parse(html).tags
    log = [attrs for tag, attrs in tags if attrs.get("id") == "messages"]
    assert log == [
        {
            "class": "messages",
            "id": "messages",
            "role": "log",
            "aria-live": "polite",
            "aria-labelledby": "conversation-title",
            "tabindex": "0",
        }
    ]
    assert ("label", {"class": "visually-hidden", "for": "composer-input"}) in tags
    assert "Offline demo agent" in html
    assert 'name="csrf-token"' in html


async def test_it_names_the_active_agent(async_client: AsyncClient, settings) -> None:
    settings.CHAT_BACKEND = f"{__name__}.NamedAgentBackend"
    _, html = await get_page(async_client)
    assert (
        '<span class="backend-agent" id="backend-agent">Research agent</span>' in html
    )
    assert '<span class="badge" id="backend-offline" hidden>offline</span>' in html


async def test_it_labels_every_control(async_client: AsyncClient) -> None:
    _, html = await get_page(async_client)
    parser = parse(html)
    labelled = {attrs.get("for") for tag, attrs in parser.tags if tag == "label"}
    for tag, attrs in parser.tags:
        if tag in ("textarea", "input", "select"):
            assert attrs.get("id") in labelled or attrs.get("aria-label"), attrs
    buttons = re.findall(r"<button[^>]*>(.*?)</button>", html, re.S)
    assert buttons and all(text.strip() for text in buttons)


async def test_it_sends_a_strict_content_security_policy(
    async_client: AsyncClient,
) -> None:
    response, _ = await get_page(async_client)
    directives = dict(
        part.strip().split(" ", 1)
        for part in response["Content-Security-Policy"].split(";")
    )
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert "unsafe" not in response["Content-Security-Policy"]


async def test_it_has_no_inline_script_or_style(async_client: AsyncClient) -> None:
    _, html = await get_page(async_client)
    parser = parse(html)
    assert parser.script_text == []
    for tag, attrs in parser.tags:
        assert tag != "style"
        assert "style" not in attrs, (tag, attrs)
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        if tag == "script":
            assert attrs.get("src"), attrs
        for value in attrs.values():
            assert not (value or "").strip().lower().startswith("javascript:")


async def test_it_gives_the_visitor_a_session_and_a_csrf_cookie(
    async_client: AsyncClient,
) -> None:
    response, _ = await get_page(async_client)
    assert settings.SESSION_COOKIE_NAME in response.cookies
    assert settings.CSRF_COOKIE_NAME in response.cookies
    token = response.cookies[settings.CSRF_COOKIE_NAME].value
    reply = await async_client.post(
        "/api/chat",
        {"message": "Hello"},
        content_type="application/json",
        headers={"X-CSRFToken": token, "Accept": "application/json"},
    )
    assert reply.status_code == 200, reply.content
    listed = await async_client.get("/api/conversations")
    assert [c["title"] for c in listed.json()["results"]] == ["Hello"]


def assets(html: str) -> Iterator[str]:
    for tag, attrs in parse(html).tags:
        if tag == "script" and attrs.get("src"):
            yield attrs["src"] or ""
        if tag == "link" and attrs.get("rel") == "stylesheet":
            yield attrs["href"] or ""


async def test_it_serves_every_asset_and_module_import(
    async_client: AsyncClient, manifest_storage: None
) -> None:
    _, html = await get_page(async_client)
    pending = list(assets(html))
    hashed = re.compile(r"\.[0-9a-f]{12}\.")
    assert all(hashed.search(url) for url in pending), pending
    assert [hashed.sub(".", url) for url in pending] == [
        "/static/chat/chat.css",
        "/static/chat/app.js",
    ]
    seen: set[str] = set()
    while pending:
        url = pending.pop()
        if url in seen:
            continue
        seen.add(url)
        assert url.startswith(settings.STATIC_URL), url
        response = await async_client.get(url)
        assert response.status_code == 200, url
        body = b"".join([part async for part in response.streaming_content])
        if url.endswith((".js", ".mjs")):
            assert response["Content-Type"].startswith("text/javascript"), url
            pending += [urljoin(url, path) for path in IMPORT.findall(body.decode())]
        else:
            assert response["Content-Type"].startswith("text/css"), url
    names = {url.rsplit("/", 1)[1].split(".")[0] for url in seen}
    assert {"app", "api", "sse", "markdown", "marked", "purify", "chat"} <= names
    assert {"code", "core", "python", "javascript", "bash"} <= names


@pytest.mark.parametrize(
    ("folder", "module"),
    [
        ("marked-18.2.1", "marked.esm.js"),
        ("dompurify-3.4.18", "purify.es.mjs"),
        ("highlight.js-11.12.0", "es/core.js"),
    ],
)
def test_it_vendors_browser_libraries_with_their_licence(
    folder: str, module: str
) -> None:
    path = BASE_DIR / "static" / "vendor" / folder
    assert (path / module).is_file()
    assert (path / "LICENSE").is_file()
