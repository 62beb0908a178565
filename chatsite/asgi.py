"""ASGI entry point: `uvicorn chatsite.asgi:application`.

Django has no ASGI lifespan support. Without it, uvicorn's graceful shutdown
cancels in-flight streams and re-raises SIGTERM before their cleanup runs, and the
partial replies are lost. The wrapper below answers lifespan messages and, on
shutdown, stops open chat streams and waits for them to store what they have.
"""

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

django_application = get_asgi_application()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "lifespan":
        await django_application(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            from chat import lifecycle

            await lifecycle.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
