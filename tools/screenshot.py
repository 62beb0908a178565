"""The README's picture of the chat page (docs/screenshot.png), taken again.

    python -m tools.screenshot [--output docs/screenshot.png]

Migrates a scratch SQLite database, starts the app on it with the offline demo
agent, and in headless Chromium (/usr/bin/chromium) starts three conversations and
regenerates the last reply, then photographs the page at 1100 x 760: a highlighted
code block with its Copy button, the reply's actions with the "2 / 2" attempts
pager, and the sidebar's search, rename and delete.
"""

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from testing.live import migrate_scratch_database, start_server

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
MESSAGES = [
    "Ideas for a weekend in Lisbon",
    "A pasta recipe for two",
    "How do I double every number in a list?",
]


def wait_for_reply(page: Page) -> None:
    reply = page.locator(".message-assistant:visible").last
    expect(reply).not_to_contain_class("streaming", timeout=15_000)


def photograph(url: str, output: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(url)
            page.wait_for_selector("html.js-ready", state="attached")
            composer = page.get_by_label("Message", exact=True)
            for number, text in enumerate(MESSAGES):
                if number:
                    page.get_by_role("button", name="New conversation").click()
                composer.fill(text)
                composer.press("Enter")
                wait_for_reply(page)
            page.get_by_role("button", name="Regenerate").click()
            wait_for_reply(page)
            expect(page.locator(".attempt-label:visible")).to_have_text("2 / 2")
            page.mouse.move(0, 700)  # no hover
            page.screenshot(path=str(output))
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs/screenshot.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="chatsite-screenshot-") as workdir:
        migrate_scratch_database(Path(workdir))
        env = {"DJANGO_DEBUG": "1", "CHAT_LOCAL_DELAY_MS": "1"}
        server = start_server(env, Path(workdir) / "server.log")
        try:
            photograph(f"{server.url}/", args.output)
        finally:
            server.stop()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
