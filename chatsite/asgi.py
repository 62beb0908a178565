"""ASGI entry point: `uvicorn chatsite.asgi:application`.

Threads. Django's handler runs every request in its own `ThreadSensitiveContext`,
which creates a fresh OS thread for the request's sync work (the database
receivers of `request_started`, every async ORM call) and keeps it until the
response ends — for a chat stream, its whole life: 1,000 open streams, 1,000
threads. Here each request instead enters a context bound to one of a few
long-lived single-thread executors (asgiref's `ThreadSensitiveContext(executor=)`),
so sync work keeps thread affinity within a request while the thread count stays
fixed. Requests that share a thread also share its database connection between
their hops; that is safe because a transaction never spans a hop (Django's
`atomic` is sync-only) and connections are not persistent (`CONN_MAX_AGE=0`).

Shutdown. Django has no ASGI lifespan support. Without it, uvicorn's graceful shutdown
cancels in-flight streams and re-raises SIGTERM before their cleanup runs, and the
partial replies are lost. The wrapper below answers lifespan messages and, on
shutdown, stops open chat streams and waits for them to store what they have.
"""

import itertools
import os
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from chatsite import telemetry

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class SharedThreadsASGIHandler(ASGIHandler):
    """Django's ASGI handler with a fixed set of threads for sync work."""

    def __init__(self) -> None:
        super().__init__()
        self.executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{n}")
            for n in range(settings.DJANGO_SYNC_THREADS)
        ]
        self._next_executor = itertools.cycle(self.executors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(
                f"Django can only handle HTTP connections, not {scope['type']}"
            )
        async with ThreadSensitiveContext(executor=next(self._next_executor)):
            await self.handle(scope, receive, send)


django.setup(set_prefix=False)
django_application = SharedThreadsASGIHandler()


async def lifespan_application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "lifespan":
        await django_application(scope, receive, send)
        return
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            from chat import lifecycle

            lifecycle.tune_garbage_collector()
            lifecycle.watch_for_termination()
            lifecycle.watch_for_count_requests()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            from chat import lifecycle

            await lifecycle.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


application = telemetry.configure(lifespan_application)
