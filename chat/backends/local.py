import asyncio
import re
import uuid
from collections.abc import AsyncIterator

from django.conf import settings

from chat.backends import base
from chat.backends.base import ChatBackend, Event, ReplyRequest

TOKEN = re.compile(r"\s*\S+|\s+")

TEMPLATE = """\
Hello! I am the **offline demo agent**. You said:

{quote}

This reply is generated locally, so chatsite works with no cloud account:

- it streams at a steady pace (`CHAT_LOCAL_DELAY_MS`),
- it is deterministic, which keeps tests and demos repeatable,
- set `CHAT_BACKEND=azure_agents` to talk to a real Azure AI agent.

```python
print("Hello from chatsite")
```
"""


def demo_reply(message: str) -> str:
    quote = "\n".join(f"> {line}" if line else ">" for line in message.splitlines())
    return TEMPLATE.format(quote=quote or "> (nothing)")


class LocalBackend(ChatBackend):
    """The default, offline and deterministic agent."""

    alias = "local"
    label = "Offline demo agent"
    offline = True

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        yield base.ThreadReady(request.thread_id or f"local_{uuid.uuid4().hex}")
        yield base.RunStarted(f"run_local_{uuid.uuid4().hex}")
        delay = settings.CHAT_LOCAL_DELAY_MS / 1000
        tokens = TOKEN.findall(demo_reply(request.message))
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
