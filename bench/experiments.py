"""Proposed changes to chatsite's hot paths, applied by monkeypatching so the
benchmark can measure them before anyone edits the app (target `chatsite+exp`).

BENCH_EXPERIMENTS names the ones to apply, comma-separated:

- `events`: RawEvents splits the upstream byte stream itself. The SDK's
  BaseAsyncAgentEventHandler appends every read to one bytes buffer and, per
  event, searches it from the start and copies the rest (`buffer[i:].lstrip()`),
  then decodes the event and splits it as str; here each read is split once and
  each event's `data:` line goes to orjson as bytes.
- `thread_and_run`: a new conversation costs one upstream call, not two:
  `POST /threads/runs` with `stream: true` creates the thread with the message
  and streams the run (the SDK's JSON-body overload of `create_thread_and_run`
  passes `stream=True` through); the thread id comes with `thread.run.created`.
- `gc`: once the app is loaded, `gc.freeze()` moves its ~100k long-lived objects
  out of the collector's view and the gen-0 threshold goes from 2,000 to 20,000
  allocations, so a full collection with 1,000 open streams walks far fewer
  objects and young collections run a tenth as often.
- `tracemalloc` (diagnostic, slows the app): traces allocations from startup;
  SIGUSR2 writes the live Python memory by file and line to TRACEMALLOC_OUTPUT.
"""

import os
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson


def apply() -> list[str]:
    names = [n for n in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if n]
    for name in names:
        PATCHES[name]()
    return names


def _parse(event: bytes) -> tuple[str, Any]:
    name = data = b""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            name = line[6:].strip()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
    try:
        return name.decode(), orjson.loads(data)
    except orjson.JSONDecodeError:
        return name.decode(), data.decode()


def events() -> None:
    from chat.backends import azure_agents

    class SplitRawEvents(azure_agents.RawEvents):
        def __init__(self) -> None:
            super().__init__()
            self._events: deque[bytes] = deque()
            self._tail = b""

        async def __anext__(self) -> tuple[str, Any]:
            while not self._events:
                chunk = await anext(self.response_iterator, None)
                if chunk is None:
                    tail, self._tail = self._tail.strip(), b""
                    if tail:
                        return _parse(tail)
                    raise StopAsyncIteration
                pieces = (self._tail + chunk).split(b"\n\n")
                self._tail = pieces.pop()
                self._events.extend(p for p in pieces if p.strip())
            return _parse(self._events.popleft())

    azure_agents.RawEvents = SplitRawEvents  # type: ignore[misc]


def thread_and_run() -> None:
    from azure.ai.agents.models import AsyncAgentRunStream

    from chat.backends import azure_agents as az
    from chat.backends.base import Event, ReplyRequest, ThreadReady

    original = az.AzureAgentsBackend.stream_reply

    async def stream_reply(
        self: az.AzureAgentsBackend, request: ReplyRequest
    ) -> AsyncIterator[Event]:
        if request.thread_id is not None:
            async for event in original(self, request):
                yield event
            return
        client = self.client()
        body = {
            "assistant_id": self.agent_id,
            "thread": {"messages": [{"role": "user", "content": request.message}]},
            "stream": True,
        }
        try:
            chunks = await client.create_thread_and_run(body, stream=True)
        except az.ResourceNotFoundError as exc:
            raise az.BackendError(
                az.RUN_FAILED,
                f"the agent service has no agent {self.agent_id}: {exc.message}",
            ) from exc
        except Exception as exc:
            raise az.map_error(exc) from exc
        stream = AsyncAgentRunStream(
            chunks, client.runs._handle_submit_tool_outputs, az.RawEvents()
        )
        thread_id = None
        try:
            async with stream as events:
                async for name, data in events:
                    if name == "thread.message.delta":
                        for event in az._delta_events(data):
                            yield event
                    elif name == "thread.run.created":
                        thread_id = data["thread_id"]
                        yield ThreadReady(thread_id, None)
                        yield az.RunStarted(data["id"])
                    elif name in az.RUN_ENDED:
                        yield az._run_ended(name, data)
                        return
                    elif name == "thread.run.requires_action":
                        await self.cancel(data["thread_id"], data["id"])
                        raise az.BackendError(
                            az.RUN_FAILED, "the agent asked for a client-side tool call"
                        )
                    elif name == "error":
                        raise az._error_event(data)
                    elif name == "done":
                        break
        except az.BackendError:
            raise
        except (
            az.IncompleteReadError,
            az.ServiceResponseError,
            az.aiohttp.ClientError,
        ) as exc:
            raise az.BackendError(
                az.UPSTREAM_DISCONNECTED, "the connection to the agent service was cut"
            ) from exc
        raise az.BackendError(
            az.INCOMPLETE, "the agent's reply ended before the run finished"
        )

    az.AzureAgentsBackend.stream_reply = stream_reply  # type: ignore[method-assign]


def gc_tuning() -> None:
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def trace_memory() -> None:
    import signal
    import tracemalloc

    tracemalloc.start(1)
    baseline = tracemalloc.take_snapshot()

    def dump(signum: int, frame: Any) -> None:
        snapshot = tracemalloc.take_snapshot()
        lines = []
        for key in ("filename", "lineno"):
            stats = snapshot.compare_to(baseline, key)[:40]
            total = sum(s.size_diff for s in snapshot.compare_to(baseline, key))
            lines.append(f"by {key}: {total / 2**20:.1f} MiB allocated since startup")
            lines += [
                f"{s.size_diff / 1024:10.1f} KiB {s.count_diff:8d} blocks  "
                f"{s.traceback[0].filename}:{s.traceback[0].lineno}"
                for s in stats
            ]
            lines.append("")
        with open(os.environ["TRACEMALLOC_OUTPUT"], "w") as out:
            out.write("\n".join(lines))

    signal.signal(signal.SIGUSR2, dump)


PATCHES = {
    "events": events,
    "thread_and_run": thread_and_run,
    "gc": gc_tuning,
    "tracemalloc": trace_memory,
}
