"""Proposed changes to chatsite's hot paths, applied by monkeypatching so the
benchmark can measure them before anyone edits the app (target `chatsite+exp`).

BENCH_EXPERIMENTS names the ones to apply, comma-separated:

- `gc`: once the app is loaded, `gc.freeze()` moves its ~100k long-lived objects
  out of the collector's view and the gen-0 threshold goes from 2,000 to 20,000
  allocations, so a full collection with 1,000 open streams walks far fewer
  objects and young collections run a tenth as often.
- `census` (diagnostic): the objects the collector tracks, by type, with the
  open replies, written every second to CENSUS_OUTPUT.NNN.
- `garbage` (diagnostic): what the collector finds in reference cycles, by type,
  written to GARBAGE_OUTPUT every 2 s.
- `tracemalloc` (diagnostic, slows the app): traces allocations from startup;
  SIGUSR2 writes the live Python memory (now, and its peak since the last
  dump) by file and line to TRACEMALLOC_OUTPUT,
  and the snapshot beside it (TRACEMALLOC_OUTPUT.N.snapshot); TRACEMALLOC_FRAMES
  frames are kept per allocation (1).
- `cprofile` (diagnostic, slows the app): the first SIGUSR2 starts cProfile
  (on Python 3.12 and later it sees every thread's calls), the next writes its
  statistics to CPROFILE_OUTPUT (pstats) and stops it.
- `trim`: glibc's `malloc_trim(0)` every MALLOC_TRIM_SECONDS (1) on a thread of
  its own (RSS per open stream at 100 streams: unchanged, 71.7 KiB: what the
  first burst leaves is in Python's object arenas, not in malloc's heaps).
- `switch`: the interpreter's switch interval at SWITCH_INTERVAL seconds (0.001)
  instead of 0.005 (a burst of 100 new chats on PostgreSQL: first chunks later,
  the loop and the shared threads trading the GIL more often).
- `mallocstats` (diagnostic): SIGUSR2 writes `sys._debugmallocstats()` (Python's
  object arenas, pools and blocks by size class) to MALLOCSTATS_OUTPUT.N.
- `everytick`: the collector's clock (chat.lifecycle) collects the young
  generation at every tick, as before quiet ticks were skipped.
- `eager`: the relay's tasks (a new conversation's turn, its early reader, the
  reply's producer) start eagerly, running up to their first wait inside the
  call that makes them (tried: bursts of 100 new chats, `bursts.py`, three
  alternated runs: TTFC p50 244 against 279 ms, medians; every task of the loop
  eager, uvicorn's parser fails, since the app then runs inside its callback).
- `timeline` (diagnostic): when each reply's steps happened (the view called,
  its turn stored, the first upstream event, the first chunk handed to the
  server), on the clock of `time.monotonic`; SIGUSR2 writes them as JSON to
  TIMELINE_OUTPUT.
"""

import os
from typing import Any


def apply() -> list[str]:
    names = [n for n in os.environ.get("BENCH_EXPERIMENTS", "").split(",") if n]
    for name in names:
        PATCHES[name]()
    return names


def gc_tuning() -> None:
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


def eager_tasks() -> None:
    """The relay's tasks (a new conversation's turn, its early reader, the
    reply's producer) start at once, inside the call that creates them, and
    run up to their first wait (`asyncio.Task(..., eager_start=True)`)."""
    import asyncio
    import types

    from chat import relay

    class EagerAsyncio(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        @staticmethod
        def create_task(coro: Any, *, name: Any = None, context: Any = None) -> Any:
            return asyncio.Task(
                coro,
                loop=asyncio.get_running_loop(),
                name=name,
                context=context,
                eager_start=True,
            )

    relay.asyncio = EagerAsyncio("asyncio")


def every_tick() -> None:
    from chat import lifecycle

    lifecycle.QUIET_YOUNG_COLLECTION_SECONDS = lifecycle.YOUNG_COLLECTION_SECONDS


def trace_memory() -> None:
    import signal
    import tracemalloc

    tracemalloc.start(int(os.environ.get("TRACEMALLOC_FRAMES", "1")))
    baseline = tracemalloc.take_snapshot()
    dumps = [0]

    def dump(signum: int, frame: Any) -> None:
        current, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot()
        lines = [
            f"traced now {current / 2**20:.2f} MiB, peak since the last dump "
            f"{peak / 2**20:.2f} MiB"
        ]
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
        dumps[0] += 1
        snapshot.dump(f"{os.environ['TRACEMALLOC_OUTPUT']}.{dumps[0]}.snapshot")
        del snapshot
        tracemalloc.reset_peak()

    signal.signal(signal.SIGUSR2, dump)


def garbage_census() -> None:
    """Keeps what the collector finds unreachable (`gc.DEBUG_SAVEALL`) and, every
    2 s, writes the kinds of object found so far to GARBAGE_OUTPUT, most common
    first, then lets them go: what is left in reference cycles, by type."""
    import gc
    import threading
    import time
    from collections import Counter

    gc.set_debug(gc.DEBUG_SAVEALL)
    found: Counter[str] = Counter()
    rounds = [0]

    def census() -> None:
        while True:
            time.sleep(2.0)
            kinds = Counter(
                f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
            )
            gc.garbage.clear()
            found.update(kinds)
            rounds[0] += 1
            lines = [f"{n:9d}  {kind}" for kind, n in found.most_common(60)]
            with open(os.environ["GARBAGE_OUTPUT"], "w") as out:
                out.write(f"{sum(found.values())} objects in {rounds[0]} rounds\n")
                out.write("\n".join(lines) + "\n")

    threading.Thread(target=census, daemon=True, name="garbage-census").start()


def tracked_census() -> None:
    """Every second, writes the objects the collector tracks (`gc.get_objects()`,
    the frozen ones left out) by type to CENSUS_OUTPUT, with the number of
    open replies: a young or middle collection walks these, so their number per
    open stream sets its pause."""
    import gc
    import threading
    import time
    from collections import Counter

    def census() -> None:
        from chat import relay

        n = 0
        while True:
            time.sleep(1.0)
            n += 1
            kinds = Counter(
                f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects()
            )
            lines = [f"{c:9d}  {kind}" for kind, c in kinds.most_common()]
            path = f"{os.environ['CENSUS_OUTPUT']}.{n:03d}"
            with open(path, "w") as out:
                out.write(
                    f"{sum(kinds.values())} tracked, "
                    f"{len(relay.open_replies())} open replies\n"
                )
                out.write("\n".join(lines) + "\n")

    threading.Thread(target=census, daemon=True, name="tracked-census").start()


def timeline() -> None:
    import json
    import signal
    import time
    from collections.abc import AsyncIterator
    from typing import Any

    from chat import relay, store, views
    from chat.backends import azure_agents

    now = time.monotonic
    steps: dict[str, list[float]] = {
        "view": [],
        "turn_begun": [],
        "turn_stored": [],
        "upstream_first_event": [],
        "first_chunk_out": [],
    }
    start, start_turn = relay.start, store.start_turn
    stream_reply = azure_agents.AzureAgentsBackend.stream_reply
    event_stream = views._event_stream

    async def timed_start(*args: Any, **kwargs: Any) -> Any:
        # `started` is the view's perf_counter(): CLOCK_MONOTONIC on Linux.
        steps["view"].append(kwargs["started"])
        return await start(*args, **kwargs)

    async def timed_turn(*args: Any, **kwargs: Any) -> Any:
        steps["turn_begun"].append(now())
        try:
            return await start_turn(*args, **kwargs)
        finally:
            steps["turn_stored"].append(now())

    async def timed_reply(self: Any, request: Any) -> AsyncIterator[Any]:
        first = True
        async for event in stream_reply(self, request):
            if first:
                steps["upstream_first_event"].append(now())
                first = False
            yield event

    async def timed_events(events: AsyncIterator[Any]) -> AsyncIterator[Any]:
        first = True
        async for item in events:
            if first and b'"chunk"' in item:
                steps["first_chunk_out"].append(now())
                first = False
            yield item

    def event_stream_of(events: AsyncIterator[Any]) -> Any:
        return event_stream(timed_events(events))

    relay.start = timed_start
    store.start_turn = timed_turn
    azure_agents.AzureAgentsBackend.stream_reply = timed_reply
    views._event_stream = event_stream_of

    def dump(signum: int, frame: Any) -> None:
        path = os.environ["TIMELINE_OUTPUT"]
        with open(f"{path}.tmp", "w") as out:
            json.dump(steps, out)
        os.replace(f"{path}.tmp", path)
        for times in steps.values():
            times.clear()

    signal.signal(signal.SIGUSR2, dump)


def loop_profile() -> None:
    import cProfile
    import signal
    from typing import Any

    profiles: list[cProfile.Profile] = []

    def toggle(signum: int, frame: Any) -> None:
        if not profiles:
            profiles.append(cProfile.Profile())
            profiles[0].enable()
        else:
            profile = profiles.pop()
            profile.disable()
            profile.dump_stats(os.environ["CPROFILE_OUTPUT"])

    signal.signal(signal.SIGUSR2, toggle)


def malloc_trim() -> None:
    """Every MALLOC_TRIM_SECONDS (1), glibc's `malloc_trim(0)` gives the free
    pages of its heaps back to the system."""
    import ctypes
    import threading
    import time

    libc = ctypes.CDLL("libc.so.6")
    every = float(os.environ.get("MALLOC_TRIM_SECONDS", "1"))

    def trim() -> None:
        while True:
            time.sleep(every)
            libc.malloc_trim(0)

    threading.Thread(target=trim, daemon=True, name="malloc-trim").start()


def switch_interval() -> None:
    """The interpreter's switch interval (how long a thread that wants the GIL
    waits before the holder is asked to let go): SWITCH_INTERVAL seconds
    (0.001) instead of 0.005."""
    import sys

    sys.setswitchinterval(float(os.environ.get("SWITCH_INTERVAL", "0.001")))


def malloc_stats() -> None:
    """SIGUSR2 writes the interpreter's allocator statistics
    (`sys._debugmallocstats`: Python's object arenas, pools and blocks by size
    class) to MALLOCSTATS_OUTPUT.N, N counting from 1."""
    import signal
    import sys

    dumps = [0]

    def dump(signum: int, frame: Any) -> None:
        dumps[0] += 1
        sys.stderr.flush()
        saved = os.dup(2)
        with open(f"{os.environ['MALLOCSTATS_OUTPUT']}.{dumps[0]}", "w") as out:
            os.dup2(out.fileno(), 2)
            try:
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)

    signal.signal(signal.SIGUSR2, dump)


PATCHES = {
    "mallocstats": malloc_stats,
    "switch": switch_interval,
    "trim": malloc_trim,
    "cprofile": loop_profile,
    "timeline": timeline,
    "census": tracked_census,
    "gc": gc_tuning,
    "tracemalloc": trace_memory,
    "everytick": every_tick,
    "eager": eager_tasks,
    "garbage": garbage_census,
}
