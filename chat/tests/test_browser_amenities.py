"""The chat page's everyday amenities in headless Chromium, against the app under
uvicorn: copying a reply and its code blocks (also while the reply streams),
syntax highlighting, regenerating with a pager over the attempts, editing the last
message, renaming, searching and paging through conversations, and the keyboard
(Esc, ↑, the shortcut list), at 320 px in dark mode too, under the strict CSP."""

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from playwright.async_api import expect

from chat.models import Conversation, Message
from chat.store import transcript
from emulator import EmulatorConfig, EmulatorThread
from testing.browser import CHROMIUM, ChatPage
from testing.live import LiveServer
from testing.upstream import server_env
from testing.waiting import await_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs {CHROMIUM}"),
]

CODE = 'print("Hello from chatsite")'


@pytest.fixture
def local_server(uvicorn_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return uvicorn_server_factory({"CHAT_LOCAL_DELAY_MS": "1"})


@pytest.fixture
def agent() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig(token_interval=0.01)) as emu:
        yield emu


@pytest.fixture
def azure_server(
    uvicorn_server_factory: Callable[..., LiveServer], agent: EmulatorThread
) -> LiveServer:
    return uvicorn_server_factory(server_env("azure_agents", agent))


async def clipboard(chat: ChatPage) -> str:
    return await chat.page.evaluate("navigator.clipboard.readText()")


async def allow_clipboard(chat: ChatPage, server: LiveServer) -> None:
    await chat.page.context.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=server.url
    )


async def shown_messages() -> list[tuple[str, str]]:
    @sync_to_async
    def read() -> list[tuple[str, str]]:
        conversation = Conversation.objects.get()
        messages = list(conversation.messages.order_by("created_at", "role"))
        return [(m.role, m.content) for m in transcript(messages)]

    return await read()


async def test_it_copies_highlights_and_regenerates(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await allow_clipboard(chat, local_server)
    await chat.open(local_server)
    await chat.send("Copy me")
    reply = await chat.wait_for_reply()

    # The fenced block is highlighted by its language, once finished.
    block = reply.locator(".code-block")
    await expect(block.locator(".code-language")).to_have_text("python")
    await expect(block.locator("code.hljs .hljs-string")).to_have_text(
        '"Hello from chatsite"'
    )
    await block.get_by_role("button", name="Copy code (python)").click()
    await expect(block.get_by_role("button", name="Copied")).to_be_visible()
    assert (await clipboard(chat)).strip() == CODE
    await expect(chat.page.locator("#announcer")).to_have_text(
        "Copied to the clipboard"
    )
    await expect(block.get_by_role("button", name="Copy code (python)")).to_be_visible(
        timeout=5_000
    )

    # The reply's Copy gives its Markdown source, exactly as stored.
    await reply.get_by_role("button", name="Copy reply").click()
    await expect(reply.locator(".action-copy")).to_have_text("Copied")
    stored = await Message.objects.filter(role="assistant").aget()
    assert await clipboard(chat) == stored.content
    assert "**offline demo agent**" in stored.content

    # Regenerate: a second attempt, shown, with a pager back to the first.
    first_id = await reply.get_attribute("data-message-id")
    await reply.get_by_role("button", name="Regenerate").click()
    latest = await chat.wait_for_reply()
    await expect(chat.page.locator(".message-assistant")).to_have_count(2)
    await expect(chat.page.locator(".message-assistant:visible")).to_have_count(1)
    await expect(latest.locator(".attempt-label")).to_have_text("2 / 2")
    await expect(latest.get_by_text("Attempt 2 of 2")).to_have_class("visually-hidden")
    assert await latest.get_attribute("data-message-id") != first_id
    await latest.get_by_role("button", name="Previous attempt").click()
    first = chat.page.locator(f'[data-message-id="{first_id}"]')
    await expect(first).to_be_visible()
    await expect(first.locator(".attempt-label")).to_have_text("1 / 2")
    await expect(first.get_by_role("button", name="Next attempt")).to_be_focused()
    replies = Message.objects.filter(role="assistant")
    assert {m.reply_to_id async for m in replies} == {
        (await Message.objects.aget(role="user")).pk
    }

    # A reload shows the latest attempt, and the pager.
    await chat.page.reload()
    await expect(chat.page.locator(".message-assistant:visible")).to_have_count(1)
    await expect(chat.assistant().locator(".attempt-label")).to_have_text("2 / 2")
    await chat.assert_clean()


async def test_finished_code_blocks_copy_while_the_reply_streams(
    chat: ChatPage, agent: EmulatorThread, azure_server: LiveServer
) -> None:
    agent.configure(
        reply=["Here:\n\n", "```js\n", "const a = 1;\n", "```\n\n", "And ", "more"],
        hold_after=5,
    )
    await allow_clipboard(chat, azure_server)
    await chat.open(azure_server)
    await chat.send("Some code")
    reply = chat.assistant()
    await expect(reply).to_contain_text("And")
    await expect(reply).to_contain_class("streaming")
    block = reply.locator(".md-frozen .code-block")
    await expect(block.locator(".hljs-keyword")).to_have_text("const")
    await block.get_by_role("button", name="Copy code (js)").click()
    await expect(block.get_by_role("button", name="Copied")).to_be_visible()
    assert await clipboard(chat) == "const a = 1;\n"
    # The reply's own actions come when it is complete; Esc stops it.
    await expect(reply.get_by_role("button", name="Copy reply")).to_be_hidden()
    await chat.page.keyboard.press("Escape")
    await expect(reply.locator(".message-status")).to_have_text("Stopped")
    await expect(reply.get_by_role("button", name="Copy reply")).to_be_visible()
    agent.release()
    await chat.assert_clean()


async def test_it_edits_the_last_message_from_the_keyboard(
    chat: ChatPage, agent: EmulatorThread, azure_server: LiveServer
) -> None:
    await chat.open(azure_server)
    await chat.send("first question")
    await chat.wait_for_reply()
    await chat.send("second question")
    await chat.wait_for_reply()
    keyboard = chat.page.keyboard

    # ↑ in the empty composer takes the last message; Esc gives it back.
    await chat.input.press("ArrowUp")
    await expect(chat.input).to_have_value("second question")
    await expect(chat.page.locator("#editing")).to_be_visible()
    await keyboard.press("Escape")
    await expect(chat.input).to_have_value("")
    await expect(chat.page.locator("#editing")).to_be_hidden()

    await chat.input.press("ArrowUp")
    await keyboard.press("End")
    await keyboard.type(", edited")
    await keyboard.press("Enter")
    reply = await chat.wait_for_reply()
    await expect(reply.locator(".message-body")).to_have_text(
        "You said: second question, edited"
    )
    await expect(chat.page.locator(".message-user .message-body")).to_have_text(
        ["first question", "second question, edited"]
    )
    expected = [
        ("user", "first question"),
        ("assistant", "You said: first question"),
        ("user", "second question, edited"),
        ("assistant", "You said: second question, edited"),
    ]
    assert await shown_messages() == expected
    # What the agent sees is what the page shows: a thread of exactly that.
    thread_id = (await Conversation.objects.aget()).upstream_thread_id
    thread = agent.threads[thread_id]
    assert [(m.role, m.text) for m in thread.messages] == expected

    # Only the last message offers Edit; the button does what ↑ does.
    edits = chat.page.get_by_role("button", name="Edit your last message")
    await expect(edits).to_have_count(1)
    await edits.click()
    await expect(chat.input).to_have_value("second question, edited")
    await chat.page.get_by_role("button", name="Cancel edit").click()
    await expect(chat.input).to_be_focused()

    # The shortcut list: from its button, or ? outside a text field.
    opener = chat.page.get_by_role("button", name="Keyboard shortcuts")
    await opener.click()
    dialog = chat.page.get_by_role("dialog", name="Keyboard shortcuts")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("Edit your last message")
    await keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    # Focus goes back to what opened the list.
    await expect(opener).to_be_focused()
    await chat.log.focus()
    await keyboard.press("?")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name="Close").click()
    await expect(chat.log).to_be_focused()
    await chat.assert_clean()


async def test_it_renames_searches_and_pages_conversations(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await chat.open(local_server)
    await chat.send("Alpha question")
    await chat.wait_for_reply()
    owner_key = (await Conversation.objects.aget()).owner_key
    await Conversation.objects.abulk_create(
        Conversation(title=f"Older {i:02}", backend="local", owner_key=owner_key)
        for i in range(60)
    )
    # Older than the conversation the page started.
    await Conversation.objects.filter(title__startswith="Older").aupdate(
        updated_at=timezone.now() - timedelta(hours=1)
    )
    await chat.page.reload()
    items = chat.page.locator("#conversation-list .conversation-open")
    await expect(items).to_have_count(50)
    more = chat.page.get_by_role("button", name="Show older")
    await more.click()
    await expect(items).to_have_count(61)
    await expect(more).to_be_hidden()
    await expect(items.nth(50)).to_be_focused()

    # Search by message text (the reply's) and by title.
    search = chat.page.get_by_role("searchbox", name="Search conversations")
    await search.fill("offline demo agent")
    await expect(items).to_have_text(["Alpha question"])
    await search.fill("older 5")
    await expect(items).to_have_count(10)
    await search.fill("nothing like this")
    await expect(chat.page.locator("#conversations-empty")).to_have_text(
        "No conversation matches “nothing like this”."
    )
    await search.fill("")
    await expect(items).to_have_count(50)

    # Rename inline: Esc keeps the title, Enter saves it.
    rename = chat.page.get_by_role("button", name="Rename conversation: Alpha question")
    await rename.click()
    field = chat.page.get_by_role("textbox", name="Conversation title")
    await expect(field).to_be_focused()
    await field.fill("Not this")
    await field.press("Escape")
    await expect(rename).to_be_focused()
    await rename.click()
    await field.fill("Project Alpha")
    await field.press("Enter")
    renamed = chat.page.get_by_role("button", name="Rename conversation: Project Alpha")
    await expect(renamed).to_be_focused()
    await expect(chat.page.locator("#conversation-title")).to_have_text("Project Alpha")
    await await_until(
        lambda: Conversation.objects.filter(title="Project Alpha").aexists()
    )
    await chat.assert_clean()


async def test_the_amenities_fit_a_narrow_dark_screen(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await chat.page.set_viewport_size({"width": 320, "height": 640})
    await chat.page.emulate_media(color_scheme="dark")
    await chat.open(local_server)
    await chat.send("Narrow")
    reply = await chat.wait_for_reply()
    await reply.get_by_role("button", name="Regenerate").click()
    reply = await chat.wait_for_reply()
    await expect(reply.locator(".attempt-label")).to_have_text("2 / 2")
    width = await chat.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 320
    for control in (
        reply.get_by_role("button", name="Previous attempt"),
        reply.get_by_role("button", name="Copy code (python)"),
        chat.page.get_by_role("button", name="Keyboard shortcuts"),
    ):
        box = await control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 320
    # Dark tokens on the dark code background.
    color = await reply.locator(".hljs-string").evaluate(
        "(el) => getComputedStyle(el).color"
    )
    assert color == "rgb(143, 224, 160)"
    await chat.page.get_by_role("button", name="Keyboard shortcuts").click()
    dialog = chat.page.get_by_role("dialog", name="Keyboard shortcuts")
    box = await dialog.bounding_box()
    assert box is not None and box["width"] <= 320
    await chat.assert_clean()


# Feeds a StreamingMarkdown a reply whose code block finishes mid-stream, a frame
# per piece, counting highlight.js's work (the module the page's code.js uses).
HIGHLIGHT_COUNT = """
async () => {
  const app = document.querySelector("script[type=module]").src;
  const { StreamingMarkdown } = await import(new URL("./markdown.js", app));
  const core = new URL("../vendor/highlight.js-11.12.0/es/core.js", app);
  const hljs = (await import(core)).default;
  const highlight = hljs.highlight;
  let calls = 0;
  hljs.highlight = (...args) => {
    calls += 1;
    return highlight.apply(hljs, args);
  };
  const body = document.createElement("div");
  document.body.append(body);
  const renderer = new StreamingMarkdown(body);
  const pieces = ["```python\\n", "x = 1\\n", "y = 2\\n", "```\\n\\n", "After", " it."];
  const frames = [];
  const look = () => [
    calls,
    body.querySelectorAll("code.hljs").length,
    body.querySelectorAll(".copy-code").length,
  ];
  for (const piece of pieces) {
    renderer.append(piece);
    renderer.flush();
    frames.push(look());
  }
  renderer.finish();
  frames.push(look());
  hljs.highlight = highlight;
  return frames;
}
"""


async def test_a_code_block_is_highlighted_once_when_finished(
    chat: ChatPage, local_server: LiveServer
) -> None:
    await chat.open(local_server)
    frames = await chat.page.evaluate(HIGHLIGHT_COUNT)
    # [highlight calls, highlighted blocks, Copy buttons] after each frame: none
    # while the block is open, one call when the next block starts, none after,
    # not even for the final render of the whole reply.
    assert frames == [[0, 0, 0]] * 4 + [[1, 1, 1]] * 3
    await chat.assert_clean()
