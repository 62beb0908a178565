"""What the chat page's browser tests share: headless Chromium (one per test
module), a fresh context and page per test with its CSP violations, script errors
and console errors recorded (`ChatPage`), and static files collected once.

Playwright's async API: its sync API marks an event loop as running in the main
thread between calls, which breaks pytest-asyncio fixtures and Django's
async-safety checks. chat/tests/conftest.py offers the fixtures (`chromium`,
which collects the static files first, and `chat`); a test module marks itself
`browser`, with loop_scope="module".
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    async_playwright,
    expect,
)

from testing.live import LiveServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Records CSP violations before any page script runs.
WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def chromium(collected_static: None) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@dataclass
class ChatPage:
    page: Page
    problems: list[str] = field(default_factory=list)

    @classmethod
    def watching(cls, page: Page) -> "ChatPage":
        """The page, with its script errors and console errors recorded."""
        chat_page = cls(page)

        def on_console(message: ConsoleMessage) -> None:
            if message.type in ("error", "warning"):
                chat_page.problems.append(f"console {message.type}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: chat_page.problems.append(f"error: {error}"))
        return chat_page

    @property
    def log(self) -> Locator:
        return self.page.locator("#messages")

    @property
    def input(self) -> Locator:
        return self.page.get_by_label("Message", exact=True)

    def assistant(self, index: int = -1) -> Locator:
        return self.page.locator(".message-assistant").nth(index)

    async def open(self, server: LiveServer) -> None:
        await self.page.goto(f"{server.url}/")
        await expect(self.page.locator("html.js-ready")).to_have_count(1)

    async def send(self, text: str) -> None:
        await self.input.fill(text)
        await self.input.press("Enter")

    async def wait_for_reply(self, timeout: float = 15_000) -> Locator:
        """The last reply once it is shown whole and the page is idle again
        (Send is back): what the keyboard does next no longer meets the reply."""
        reply = self.assistant()
        await expect(reply).not_to_contain_class("streaming", timeout=timeout)
        await expect(reply).not_to_have_attribute("aria-busy", "true")
        await expect(self.page.locator("#send")).to_be_visible()
        return reply

    async def assert_clean(self, allowed: tuple[str, ...] = ()) -> None:
        """No CSP violation, script error or console error (except `allowed`)."""
        violations = await self.page.evaluate("window.__cspViolations")
        assert violations == []
        problems = [p for p in self.problems if not any(a in p for a in allowed)]
        assert problems == []


@pytest_asyncio.fixture(loop_scope="module")
async def chat(
    chromium: Browser, request: pytest.FixtureRequest, output_path: str
) -> AsyncIterator[ChatPage]:
    context = await chromium.new_context(viewport={"width": 1100, "height": 760})
    await context.add_init_script(WATCH_CSP)
    page = await context.new_page()
    chat_page = ChatPage.watching(page)
    yield chat_page
    # pytest-playwright's report hook sets rep_call once the test body ran.
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        await page.screenshot(path=f"{output_path}/final-state.png", full_page=True)
    await context.close()
