"""The fixed set of threads that run sync work (the ORM, sync cache calls) for
the event loop: each request, and each chat reply's producer, is bound to one of
`DJANGO_SYNC_THREADS` single-thread executors in turn (chatsite.asgi)."""

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings

_cycle: Iterator[ThreadPoolExecutor] | None = None


def next_executor() -> ThreadPoolExecutor:
    """One of the executors, in turn, for an `asgiref.sync.ThreadSensitiveContext`."""
    global _cycle
    if _cycle is None:
        _cycle = itertools.cycle(
            [
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"django-sync-{n}")
                for n in range(settings.DJANGO_SYNC_THREADS)
            ]
        )
    return next(_cycle)
