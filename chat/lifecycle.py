"""Process shutdown: store every reply in flight before the process exits."""

import asyncio
import logging

from chat import relay
from chat.backends import aclose_all

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 8.0


async def shutdown(grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """Stops open replies and waits for their cleanup.

    uvicorn cancels the request tasks first, but they only run their cleanup when
    the loop gets control again, which is here: waiting lets each producer store
    its partial reply and cancel its upstream run before the process exits.
    """
    replies = list(relay.ACTIVE.values())
    for reply in replies:
        reply.stop(relay.SHUTDOWN)
    tasks = {reply.task for reply in replies if reply.task is not None}
    if tasks:
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        logger.info(
            "stopped %d open replies at shutdown, %d did not finish storing",
            len(replies),
            len(pending),
        )
    await aclose_all()
