"""The chat page in headless Chromium against the real app under uvicorn.

Playwright's async API: its sync API marks an event loop as running in the main
thread between calls, which breaks pytest-asyncio fixtures and Django's
async-safety checks. One browser serves the module; each test gets a fresh
context (cookies, storage) and its own server.
"""

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Locator, Page, Route, expect

from chat.models import Message
from emulator import EmulatorConfig, EmulatorThread
from testing.browser import CHROMIUM, ChatPage
from testing.live import LiveServer
from testing.readme import snippet
from testing.replies import astored_reply
from testing.upstream import server_env
from testing.waiting import await_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs {CHROMIUM}"),
]


@pytest.fixture
def local_server(uvicorn_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return uvicorn_server_factory({"CHAT_LOCAL_DELAY_MS": "2"})


@pytest.fixture
def agent() -> Iterator[EmulatorThread]:
    """The Azure Agents emulator, answering slowly enough to watch."""
    with EmulatorThread(config=EmulatorConfig(token_interval=0.02)) as emu:
        yield emu


@pytest.fixture
def azure_server(
    uvicorn_server_factory: Callable[..., LiveServer], agent: EmulatorThread
) -> LiveServer:
    return uvicorn_server_factory(server_env("azure_agents", agent))


@pytest.fixture
def resuming_server(
    uvicorn_server_factory: Callable[..., LiveServer], agent: EmulatorThread
) -> LiveServer:
    """Replies go on when their connection ends, as they do by default."""
    env = server_env("azure_agents", agent, CHAT_ON_DISCONNECT="continue")
    return uvicorn_server_factory(env)


# One delta per piece: a reply held after HELD_AFTER of them shows exactly HELD.
REPLY = [
    "Every ",
    "word ",
    "arrives ",
    "once, ",
    "in ",
    "order, ",
    "whatever ",
    "happens ",
    "to ",
    "the ",
    "connection.",
]
HELD_AFTER = 4
HELD = "".join(REPLY[:HELD_AFTER])
FULL = "".join(REPLY)


async def test_it_shows_text_while_the_agent_still_writes(
    chat: ChatPage, agent: EmulatorThread, azure_server: LiveServer
) -> None:
    agent.configure(
        reply="First words arrive early. The rest waits for **release**.",
        hold_after=4,
        annotations=True,
    )
    await chat.open(azure_server)
    await chat.send("Tell me something")
    reply = chat.assistant()
    await expect(reply.locator(".message-body")).to_contain_text("First words arrive")
    await expect(reply).to_contain_class("streaming")
    await expect(reply.locator(".cursor")).to_have_count(1)
    assert await reply.locator(".cursor").evaluate("(el) => el.getAnimations().length")
    assert "release" not in await reply.inner_text()

    agent.release()
    await chat.wait_for_reply()
    await expect(reply.locator("strong")).to_have_text("release")
    await expect(reply.locator(".cursor")).to_have_count(0)
    # Citations: the markers became footnote links, the sources are listed.
    await expect(reply.locator(".message-body a[href^='#cite-']")).to_have_text(
        ["[1]", "[2]"]
    )
    source = reply.get_by_role("link", name="What is Azure AI Foundry Agent Service?")
    await expect(source).to_have_attribute("target", "_blank")
    await expect(source).to_have_attribute("rel", "noopener noreferrer")
    await expect(reply.locator(".citation-quote")).to_have_text(
        "Agents combine a model, instructions and tools."
    )
    await chat.assert_clean()
    # The agent's name, fetched with the first reply, labels the page from now on.
    await chat.page.reload()
    await expect(chat.page.locator("#backend-agent")).to_have_text("Emulated agent")
    await expect(chat.page.locator("#backend-offline")).to_be_hidden()


async def test_it_shows_the_tools_the_agent_uses_then_folds_them_into_the_reply(
    chat: ChatPage, agent: EmulatorThread, azure_server: LiveServer
) -> None:
    agent.configure(
        tools=["file_search", "code_interpreter"], hold_tool=True, image=True
    )
    await chat.open(azure_server)
    await chat.send("What is in my files?")
    reply = chat.assistant()
    status = reply.get_by_role("status")
    await expect(status).to_have_text("Searching files…")
    agent.release()
    await expect(status).to_have_text("Running code…")
    await expect(reply.locator(".tools-summary")).to_have_text("Searched files")
    agent.release()
    await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_have_text(
        "You said: What is in my files?"
    )
    await expect(status).to_be_hidden()
    summary = reply.locator(".tools-summary")
    await expect(summary).to_have_text("Searched files · Ran code")
    code = reply.locator(".tool-code")
    await expect(code.first).to_be_hidden()
    await summary.click()
    await expect(code).to_have_text(
        ["Codeprint(sum(range(10)))", "Output45"], use_inner_text=False
    )
    # The chart the code drew, served by the site, under the page's CSP.
    await assert_image_shown(reply)
    await chat.assert_clean()
    # Read back from the database, the reply shows the same.
    await chat.page.reload()
    stored = chat.assistant()
    await expect(stored.locator(".tools-summary")).to_have_text(
        "Searched files · Ran code"
    )
    await assert_image_shown(stored)
    await chat.assert_clean()


async def assert_image_shown(reply: Locator) -> None:
    image = reply.locator(".message-files img")
    await expect(image).to_be_visible()
    await expect(image).to_have_attribute("alt", "An image the agent made")
    assert (
        await image.evaluate("(img) => img.decode().then(() => img.naturalWidth)") == 1
    )


async def test_it_stops_a_reply_and_keeps_it_after_a_reload(
    chat: ChatPage, agent: EmulatorThread, azure_server: LiveServer
) -> None:
    agent.configure(reply="Partial answer that never ends", hold_after=2)
    await chat.open(azure_server)
    await chat.send("Start something long")
    reply = chat.assistant()
    await expect(reply.locator(".message-body")).to_contain_text("Partial answer")
    await chat.page.get_by_role("button", name="Stop").click()

    await chat.wait_for_reply()
    await expect(reply.locator(".message-status")).to_have_text("Stopped")
    await expect(reply.locator(".message-body")).to_have_text("Partial answer")
    await expect(chat.page.get_by_role("button", name="Send")).to_be_visible()
    await expect(chat.input).to_be_focused()
    await await_until(lambda: agent.cancelled_runs)
    assert len(agent.cancelled_runs) == 1

    await chat.page.reload()
    stored = chat.assistant()
    await expect(stored.locator(".message-status")).to_have_text("Stopped")
    await expect(stored.locator(".message-body")).to_have_text("Partial answer")
    await expect(chat.page.locator(".message-user")).to_contain_text(
        "Start something long"
    )
    message = await Message.objects.filter(role=Message.Role.ASSISTANT).aget()
    assert message.status == Message.Status.CANCELLED
    await chat.assert_clean()


async def test_it_shows_an_interrupted_reply_after_a_reload_mid_stream(
    chat: ChatPage, uvicorn_server_factory: Callable[..., LiveServer]
) -> None:
    # 60-odd tokens, 200 ms apart: the reply is still being written at the reload,
    # and this server stops a reply when the client that asked for it leaves.
    server = uvicorn_server_factory(
        {"CHAT_LOCAL_DELAY_MS": "200", "CHAT_ON_DISCONNECT": "cancel"}
    )
    await chat.open(server)
    await chat.send("Keep talking")
    await expect(chat.assistant().locator(".message-body")).to_contain_text("Hello!")
    await chat.page.reload()
    # Stored, or followed to its end: either way it says it was cut off.
    stored = chat.assistant()
    await expect(stored.locator(".message-status")).to_contain_text("Interrupted")
    await expect(stored.locator(".message-body")).to_contain_text("Hello!")
    await chat.assert_clean()


async def test_it_renders_markup_in_replies_inert(
    chat: ChatPage, local_server: LiveServer
) -> None:
    # The offline agent quotes the message verbatim inside its reply.
    await chat.open(local_server)
    await chat.send(
        "<img src=x onerror=window.__xss=1> <script>window.__xss=2</script> "
        '<a href="javascript:window.__xss=3">raw</a> [md](javascript:window.__xss=4) '
        "[docs](https://example.com/docs)"
    )
    reply = await chat.wait_for_reply()
    await expect(reply.locator("blockquote")).to_contain_text("<img src=x onerror=")
    await expect(reply.locator("blockquote")).to_contain_text("<script>")
    assert await chat.log.locator("img, script, iframe").count() == 0
    assert await chat.log.locator("[href^='javascript:' i]").count() == 0
    link = reply.get_by_role("link", name="docs")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await chat.page.get_by_text("md", exact=True).click()
    assert await chat.page.evaluate("window.__xss") is None
    await chat.assert_clean()


async def test_it_works_with_the_keyboard_alone(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await chat.open(local_server)
    await expect(chat.input).to_be_focused()
    keyboard = chat.page.keyboard
    await keyboard.type("first line")
    await keyboard.press("Shift+Enter")
    await keyboard.type("second line")
    await expect(chat.input).to_have_value("first line\nsecond line")
    await keyboard.press("Enter")

    await expect(chat.page.locator(".message-user .message-body")).to_have_text(
        "first line\nsecond line"
    )
    await expect(chat.input).to_have_value("")
    await chat.wait_for_reply()
    await expect(chat.input).to_be_focused()
    await keyboard.press("Tab")
    send = chat.page.get_by_role("button", name="Send")
    await expect(send).to_be_focused()
    outline = await send.evaluate("(el) => getComputedStyle(el).outlineStyle")
    assert outline == "solid"
    await chat.assert_clean()


async def test_it_shows_a_rate_limit_and_retries(
    chat: ChatPage, agent: EmulatorThread, azure_server: LiveServer
) -> None:
    agent.push(fault="http_429_retry_after", retry_after=1)
    await chat.open(azure_server)
    await chat.send("Are you busy?")
    error = chat.assistant().locator(".message-error")
    retry = error.get_by_role("button", name="Retry")
    await expect(error.locator(".message-error-hint")).to_have_text("Try again in 1 s.")
    await expect(retry).to_be_disabled()
    await expect(retry).to_be_enabled(timeout=10_000)
    await retry.click()

    reply = await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_have_text("You said: Are you busy?")
    await expect(chat.page.locator(".message-error")).to_have_count(0)
    await expect(chat.page.locator(".message-user")).to_have_count(1)
    await chat.assert_clean()


async def test_it_lists_switches_and_deletes_conversations(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await chat.open(local_server)
    await chat.send("Alpha question")
    await chat.wait_for_reply()
    await chat.page.get_by_role("button", name="New conversation").click()
    await expect(chat.input).to_be_focused()
    await expect(chat.page.locator(".message")).to_have_count(0)
    await chat.send("Beta question")
    await chat.wait_for_reply()

    items = chat.page.locator("#conversation-list .conversation-open")
    await expect(items).to_have_text(["Beta question", "Alpha question"])
    await expect(items.first).to_have_attribute("aria-current", "page")

    await items.nth(1).click()
    await expect(chat.page.locator("#conversation-title")).to_have_text(
        "Alpha question"
    )
    await expect(chat.page.locator(".message-user .message-body")).to_have_text(
        ["Alpha question"]
    )
    await expect(chat.assistant().locator("blockquote")).to_have_text("Alpha question")
    alpha_hash = await chat.page.evaluate("location.hash")

    await chat.page.get_by_role(
        "button", name="Delete conversation: Beta question"
    ).click()
    await expect(items).to_have_text(["Alpha question"])
    await chat.page.reload()
    assert await chat.page.evaluate("location.hash") == alpha_hash
    await expect(chat.page.locator(".message-user .message-body")).to_have_text(
        ["Alpha question"]
    )
    await chat.assert_clean()


async def cursor_animations(page: Page) -> int:
    """How many animations a new streaming cursor runs on this page."""
    return await page.evaluate(
        """async () => {
          const app = document.querySelector("script[type=module]").src;
          const { StreamingMarkdown } = await import(new URL("./markdown.js", app));
          const renderer = new StreamingMarkdown(document.createElement("div"));
          return renderer.cursor.getAnimations().length;
        }"""
    )


async def test_it_adapts_to_a_narrow_dark_screen_without_motion(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await chat.page.set_viewport_size({"width": 320, "height": 640})
    await chat.page.emulate_media(color_scheme="dark", reduced_motion="reduce")
    await chat.open(local_server)
    await chat.send("A narrow screen with a `long_identifier_without_spaces_at_all`")
    await chat.wait_for_reply()
    width = await chat.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 320
    background = await chat.page.evaluate(
        "getComputedStyle(document.body).backgroundColor"
    )
    assert background == "rgb(21, 23, 27)"
    assert await cursor_animations(chat.page) == 0
    toggle = chat.page.get_by_role("button", name="Conversations")
    await expect(chat.page.locator("#sidebar")).to_be_hidden()
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    conversations = chat.page.locator("#conversation-list .conversation-open")
    await expect(conversations).to_have_count(1)
    await chat.assert_clean()


async def test_it_handles_answers_that_are_not_event_streams(
    chat: ChatPage, local_server: LiveServer
) -> None:
    async def ask_for_json(route: Route) -> None:
        headers = {**route.request.headers, "accept": "application/json"}
        await route.fulfill(response=await route.fetch(headers=headers))

    async def rate_limit(route: Route) -> None:
        await route.fulfill(
            status=429,
            headers={"Retry-After": "1"},
            json={"error": "Too many requests", "code": "rate_limited"},
        )

    await chat.open(local_server)
    await chat.page.route("**/api/chat", ask_for_json)
    await chat.send("Answer in JSON")
    reply = await chat.wait_for_reply()
    await expect(reply.locator("blockquote")).to_have_text("Answer in JSON")
    await expect(reply.locator("pre code")).to_contain_text("Hello from chatsite")

    await chat.page.unroute("**/api/chat")
    await chat.page.route("**/api/chat", rate_limit)
    await chat.send("Too fast")
    error = chat.assistant().locator(".message-error")
    await expect(error.locator(".message-error-text")).to_have_text("Too many requests")
    await expect(error.locator(".message-error-hint")).to_have_text("Try again in 1 s.")
    await chat.page.unroute("**/api/chat")
    await error.get_by_role("button", name="Retry").click()
    reply = await chat.wait_for_reply()
    await expect(reply.locator("blockquote")).to_have_text("Too fast")
    await chat.assert_clean(allowed=("status of 429",))


async def test_it_continues_a_reply_after_a_reload(
    chat: ChatPage, agent: EmulatorThread, resuming_server: LiveServer
) -> None:
    agent.configure(reply=REPLY, hold_after=HELD_AFTER)
    await chat.open(resuming_server)
    await chat.send("Keep going")
    await expect(chat.assistant().locator(".message-body")).to_have_text(HELD)
    await chat.page.reload()

    # The text so far, once, still being written.
    reply = chat.assistant()
    await expect(reply.locator(".message-body")).to_have_text(HELD)
    await expect(reply).to_contain_class("streaming")
    await expect(chat.page.get_by_role("button", name="Stop")).to_be_visible()
    agent.release()
    await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_have_text(FULL)
    await expect(reply.locator(".message-status, .message-error")).to_have_count(0)
    await expect(chat.page.locator(".message-user .message-body")).to_have_text(
        ["Keep going"]
    )
    await expect(chat.page.locator(".message-assistant")).to_have_count(1)
    stored = await astored_reply()
    assert (stored.content, stored.status) == (FULL, Message.Status.COMPLETE)
    await chat.assert_clean()


async def test_it_reconnects_after_the_network_drops(
    chat: ChatPage, agent: EmulatorThread, resuming_server: LiveServer
) -> None:
    agent.configure(reply=REPLY, hold_after=HELD_AFTER)
    resumes: list[str] = []

    async def fail_once(route: Route) -> None:
        resumes.append(route.request.url)
        if len(resumes) == 1:
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await chat.open(resuming_server)
    await chat.send("Keep going")
    reply = chat.assistant()
    await expect(reply.locator(".message-body")).to_have_text(HELD)

    await chat.page.context.set_offline(True)
    notice = chat.page.locator("#notice")
    await expect(notice).to_have_text("Reconnecting…")
    await expect(notice).to_have_attribute("role", "status")
    await expect(reply).to_contain_class("streaming")
    # Back online, the first attempt fails as well; a later one gets through.
    await chat.page.route("**/api/conversations/*/stream*", fail_once)
    await chat.page.context.set_offline(False)
    await expect(notice).to_be_empty()
    assert len(resumes) >= 2
    # Every attempt asked for what followed the last frame shown.
    last_ids = {url.partition("last_event_id=")[2] for url in resumes}
    assert len(last_ids) == 1
    assert int(last_ids.pop()) >= HELD_AFTER
    await expect(reply.locator(".message-body")).to_have_text(HELD)

    agent.release()
    await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_have_text(FULL)
    await expect(reply.locator(".message-status, .message-error")).to_have_count(0)
    stored = await astored_reply()
    assert (stored.content, stored.status) == (FULL, Message.Status.COMPLETE)
    await chat.assert_clean(
        allowed=("ERR_INTERNET_DISCONNECTED", "ERR_CONNECTION_RESET")
    )


async def test_it_reconnects_after_the_reply_ended_meanwhile(
    chat: ChatPage,
    agent: EmulatorThread,
    uvicorn_server_factory: Callable[..., LiveServer],
) -> None:
    # Nothing is kept for replay: the server answers from the stored reply, its
    # text as one chunk with ids from 0, and the page shows it afresh.
    env = server_env(
        "azure_agents",
        agent,
        CHAT_ON_DISCONNECT="continue",
        CHAT_REPLAY_TTL_SECONDS="0",
    )
    server = uvicorn_server_factory(env)
    agent.configure(reply=REPLY, hold_after=HELD_AFTER)
    await chat.open(server)
    await chat.send("Keep going")
    reply = chat.assistant()
    await expect(reply.locator(".message-body")).to_have_text(HELD)

    await chat.page.context.set_offline(True)
    await expect(chat.page.locator("#notice")).to_have_text("Reconnecting…")
    agent.release()
    stored = await astored_reply()
    assert (stored.content, stored.status) == (FULL, Message.Status.COMPLETE)
    await chat.page.context.set_offline(False)

    await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_have_text(FULL)
    await expect(reply.locator(".message-status, .message-error")).to_have_count(0)
    await expect(chat.page.locator(".message-assistant")).to_have_count(1)
    await chat.assert_clean(allowed=("ERR_INTERNET_DISCONNECTED",))


async def test_it_follows_a_reply_in_a_second_tab_and_stops_it_from_there(
    chat: ChatPage, agent: EmulatorThread, resuming_server: LiveServer
) -> None:
    agent.configure(reply=REPLY, hold_after=HELD_AFTER)
    await chat.open(resuming_server)
    await chat.send("Keep going")
    await expect(chat.assistant().locator(".message-body")).to_have_text(HELD)

    second = ChatPage.watching(await chat.page.context.new_page())
    await second.page.goto(chat.page.url)
    followed = second.assistant()
    await expect(followed.locator(".message-body")).to_have_text(HELD)
    await expect(followed).to_contain_class("streaming")
    await second.page.get_by_role("button", name="Stop").click()

    for tab in (chat, second):
        reply = await tab.wait_for_reply()
        await expect(reply.locator(".message-status")).to_have_text("Stopped")
        await expect(reply.locator(".message-body")).to_have_text(HELD)
        await expect(tab.page.get_by_role("button", name="Send")).to_be_visible()
    await await_until(lambda: agent.cancelled_runs)
    assert len(agent.cancelled_runs) == 1
    stored = await astored_reply()
    assert (stored.content, stored.status) == (HELD, Message.Status.CANCELLED)
    await chat.assert_clean()
    await second.assert_clean()


async def test_a_second_tab_picks_up_a_reply_started_in_the_first(
    chat: ChatPage, agent: EmulatorThread, resuming_server: LiveServer
) -> None:
    await chat.open(resuming_server)
    await chat.send("First question")
    await chat.wait_for_reply()
    second = ChatPage.watching(await chat.page.context.new_page())
    await second.page.goto(chat.page.url)
    await expect(second.page.locator(".message-assistant")).to_have_count(1)

    agent.push(reply=REPLY, hold_after=HELD_AFTER)
    await chat.send("Second question")
    await expect(chat.assistant().locator(".message-body")).to_have_text(HELD)
    # The idle tab looks at its conversation every few seconds.
    followed = second.assistant(1)
    await expect(followed.locator(".message-body")).to_have_text(HELD, timeout=15_000)
    await expect(second.page.locator(".message-user .message-body")).to_have_text(
        ["First question", "Second question"]
    )

    agent.release()
    for tab in (chat, second):
        reply = await tab.wait_for_reply()
        await expect(reply.locator(".message-body")).to_have_text(FULL)
        await expect(tab.page.locator(".message-assistant")).to_have_count(2)
    await chat.assert_clean()
    await second.assert_clean()


async def test_the_readme_eventsource_snippet_follows_a_reply_to_its_end(
    chat: ChatPage, agent: EmulatorThread, resuming_server: LiveServer
) -> None:
    """README.md's resume example, run as written in the page's origin."""
    agent.configure(reply=REPLY, hold_after=HELD_AFTER)
    await chat.open(resuming_server)
    await chat.send("Keep going")
    await expect(chat.assistant().locator(".message-body")).to_have_text(HELD)
    [conversation] = (
        await chat.page.evaluate("fetch('/api/conversations').then(r => r.json())")
    )["results"]

    following = asyncio.ensure_future(
        chat.page.evaluate(
            f"""async (id) => {{
              {snippet("js", "follow")}
              const seen = [];
              const text = await follow(id, (so_far) => seen.push(so_far));
              return {{ text, seen }};
            }}""",
            conversation["id"],
        )
    )
    agent.release()
    followed = await following
    assert followed["text"] == FULL
    assert followed["seen"][0].startswith(HELD) and followed["seen"][-1] == FULL
