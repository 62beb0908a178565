"""Signing in and out of the chat page in headless Chromium, against the app under
uvicorn with AUTH_EASY_AUTH on. The Container Apps ingress is played by the browser
context's routes: its sign-in and sign-out URLs start and stop the principal headers
that every request then carries, as the ingress adds them once its own cookie is set
and stops once it is cleared."""

import html
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import BrowserContext, Route, expect

from chat.models import Conversation
from testing.browser import CHROMIUM, ChatPage
from testing.easyauth import principal_headers
from testing.live import LiveServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs {CHROMIUM}"),
]

OBJECT_ID = str(uuid.uuid4())
GRACE = principal_headers(
    OBJECT_ID, name="Grace Hopper", given_name="Grace", surname="Hopper"
)


async def play_the_ingress(context: BrowserContext) -> None:
    """Every request gets Grace's principal headers once /.auth/login/aad has
    signed the browser in (then on to post_login_redirect_uri), none after
    /.auth/logout (then on to post_logout_redirect_uri). Pages are fetched here,
    so that their redirects pass through the routes too."""
    signed_in = False

    async def forward(route: Route) -> None:
        headers = {**route.request.headers, **(GRACE if signed_in else {})}
        if not route.request.is_navigation_request():
            await route.continue_(headers=headers)
            return
        response = await route.fetch(headers=headers, max_redirects=0)
        if response.status in (301, 302, 303, 307, 308):
            await route.fulfill(**refresh(response.headers["location"]))
        else:
            await route.fulfill(response=response)

    async def sign_in(route: Route) -> None:
        nonlocal signed_in
        signed_in = True
        await route.fulfill(**send_on(route, "login"))

    async def sign_out(route: Route) -> None:
        nonlocal signed_in
        signed_in = False
        await route.fulfill(**send_on(route, "logout"))

    # The last route added is asked first.
    await context.route("**/*", forward)
    await context.route(re.compile(r"/\.auth/login/aad\?"), sign_in)
    await context.route(re.compile(r"/\.auth/logout\?"), sign_out)


def send_on(route: Route, step: str) -> dict[str, Any]:
    query = parse_qs(urlsplit(route.request.url).query)
    return refresh(query[f"post_{step}_redirect_uri"][0])


def refresh(location: str) -> dict[str, Any]:
    """A page that sends the browser on to `location`, for a redirect: Playwright
    does not route the request that a redirect makes."""
    body = f'<meta http-equiv="refresh" content="0;url={html.escape(location)}">'
    return {"status": 200, "content_type": "text/html", "body": body}


@pytest.fixture
def signing_server(uvicorn_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return uvicorn_server_factory({"AUTH_EASY_AUTH": "1", "CHAT_LOCAL_DELAY_MS": "2"})


async def test_signing_in_takes_the_conversation_along_and_signing_out_leaves_it(
    chat: ChatPage,
    signing_server: LiveServer,
) -> None:
    page = chat.page
    await play_the_ingress(page.context)
    await chat.open(signing_server)
    account = page.locator("#account")
    await expect(account.get_by_role("link", name="Sign in")).to_be_visible()
    await chat.send("Before signing in")
    await chat.wait_for_reply()
    conversations = page.locator("#conversation-list .conversation-open")
    await expect(conversations).to_have_count(1)

    await account.get_by_role("link", name="Sign in").click()
    await expect(page.locator("html.js-ready")).to_have_count(1)
    await expect(account).to_contain_text("Signed in as Grace Hopper")
    await expect(conversations).to_have_count(1)
    await expect(conversations).to_contain_text("Before signing in")
    # Signed in, the page's writes still carry their CSRF token.
    await page.get_by_role("button", name="New conversation").click()
    await chat.send("Signed in now")
    await chat.wait_for_reply()
    await expect(conversations).to_have_count(2)
    owners = {c.owner_id async for c in Conversation.objects.all()}
    assert len(owners) == 1 and None not in owners

    await account.get_by_role("link", name="Sign out").click()
    await expect(account.get_by_role("link", name="Sign in")).to_be_visible()
    await expect(page.locator("#conversations-empty")).to_be_visible()
    await expect(conversations).to_have_count(0)
    await chat.assert_clean()


async def test_sign_in_required_goes_through_the_ingress_and_back(
    chat: ChatPage,
    uvicorn_server_factory: Callable[..., LiveServer],
) -> None:
    server = uvicorn_server_factory(
        {"AUTH_EASY_AUTH": "1", "CHAT_REQUIRE_LOGIN": "1", "CHAT_LOCAL_DELAY_MS": "2"}
    )
    page = chat.page
    await play_the_ingress(page.context)
    await page.goto(f"{server.url}/?from=bookmark")
    await expect(page.locator("html.js-ready")).to_have_count(1)
    assert page.url == f"{server.url}/?from=bookmark"
    await expect(page.locator("#account")).to_contain_text("Signed in as Grace Hopper")
    await chat.send("Hello")
    reply = await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_contain_text("Hello")
    await chat.assert_clean()
