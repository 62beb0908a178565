import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator

from django.conf import settings

from chat.backends import base
from chat.backends.base import ChatBackend, Event, ReplyRequest
from chat.tools import ToolCall, progress

TOKEN = re.compile(r"\s*\S+|\s+")
# "search posts for …": the demo agent's one function call, when the site has it.
SEARCH = re.compile(r"\bsearch (?:the )?posts? (?:for|about) (.+)", re.I | re.S)
SEARCH_TOOL = "search_posts"

TEMPLATE = """\
Hello! I am the **offline demo agent**. You said:

{quote}

This reply is generated locally, so chatsite works with no cloud account:

- it streams at a steady pace (`CHAT_LOCAL_DELAY_MS`),
- it is deterministic, which keeps tests and demos repeatable,
- ask it to *search posts for* some words to see a function tool at work,
- set `CHAT_BACKEND=azure_agents` to talk to a real Azure AI agent.

```python
print("Hello from chatsite")
```
"""


def demo_reply(message: str) -> str:
    quote = "\n".join(f"> {line}" if line else ">" for line in message.splitlines())
    return TEMPLATE.format(quote=quote or "> (nothing)")


def search_reply(query: str, output: str) -> str:
    """What the demo agent says of `search_posts`' output."""
    found = json.loads(output)
    if "error" in found:
        return f"I could not search the posts: {found['error']}"
    posts = found.get("posts") or []
    if not posts:
        return f"No published post matches *{query}*."
    lines = [f"I found these posts for *{query}*:", ""]
    lines += [f"- [{post['title']}]({post['path']})" for post in posts]
    return "\n".join(lines)


class LocalBackend(ChatBackend):
    """The default, offline and deterministic agent. Asked to "search posts for"
    some words while `CHAT_TOOLS` has `search_posts`, it calls that function
    the way a real agent's run does, then answers with what it found."""

    alias = "local"
    label = "Offline demo agent"
    offline = True

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        yield base.ThreadReady(request.thread_id or f"local_{uuid.uuid4().hex}")
        yield base.RunStarted(f"run_local_{uuid.uuid4().hex}")
        text = demo_reply(request.message)
        search = SEARCH.search(request.message)
        box = request.tools
        if search and box is not None and SEARCH_TOOL in box.tools:
            query = search.group(1).strip().rstrip("?.!")[:200]
            call = ToolCall(
                id=f"call_local_{uuid.uuid4().hex}",
                name=SEARCH_TOOL,
                arguments=json.dumps({"query": query}),
            )
            yield progress(call)
            (result,) = await box.run([call])
            yield progress(call, result)
            text = search_reply(query, result.output)
        delay = settings.CHAT_LOCAL_DELAY_MS / 1000
        tokens = TOKEN.findall(text)
        for token in tokens:
            if delay:
                await asyncio.sleep(delay)
            yield base.Delta(token)
        prompt_tokens = len(request.message.split())
        yield base.Completed(
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            }
        )
