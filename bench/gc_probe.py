"""An ASGI app with the garbage collector's pauses recorded.

`uvicorn gc_probe:application --app-dir bench` serves the app named by
GC_PROBE_APP ("module:attribute"); a `gc.callbacks` hook times every collection,
and the totals per generation go to GC_PROBE_OUTPUT (JSON) at lifespan shutdown
(uvicorn ends by re-raising SIGTERM, so atexit would never run). The hook runs
only when the collector does, and requests pass through one extra await.

With GC_PROBE_REDIS=1 it also counts the Redis commands the app sends and their
bytes, as redis-py packs them (the asyncio client of the reply log and the stop
bus, and the sync client of Django's cache), and answers
`GET /_bench/redis` with the counts so far: the harness reads them before and
after a scenario. On a Redis server that others use too, the server's own
counters (INFO) include their commands; these are this process's alone.
"""

import gc
import importlib
import json
import os
import threading
import time
from collections import Counter
from typing import Any

module_name, _, attribute = os.environ["GC_PROBE_APP"].partition(":")
app = getattr(importlib.import_module(module_name), attribute)
if os.environ.get("BENCH_EXPERIMENTS"):
    import experiments

    experiments.apply()

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
# The same collections' CPU time (the collector's own work, without the time
# the process waited for a core), and whether the app serves yet: the full
# collection of start-up (chat.lifecycle) is not a pause any request sees.
_cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}
_serving = [False]
# Redis commands by their first argument as the app passed it, and bytes sent.
_redis_calls: Counter[Any] = Counter()
_redis_bytes = [0]
REDIS_PATH = "/_bench/redis"
_started = 0.0
_started_cpu = 0.0


# The slowest collections (by CPU), with what each walked: the objects in the
# generations it collected (counted only with GC_PROBE_WALKED=1: counting lists
# them, CPU the benchmark would charge to the app), and the thread that ran it.
_COUNT_WALKED = os.environ.get("GC_PROBE_WALKED") == "1"
_slowest: list[dict[str, Any]] = []
_walked = [0]


def _record(phase: str, info: dict[str, Any]) -> None:
    global _started, _started_cpu
    generation = info["generation"]
    if phase == "start":
        if _serving[0] and _COUNT_WALKED:
            _walked[0] = sum(len(gc.get_objects(g)) for g in range(generation + 1))
        _started, _started_cpu = time.perf_counter(), time.thread_time()
    elif _serving[0]:
        wall = time.perf_counter() - _started
        cpu = time.thread_time() - _started_cpu
        _pauses[generation].append(wall)
        _cpu[generation].append(cpu)
        _slowest.append(
            {
                "generation": generation,
                "cpu_ms": round(cpu * 1000, 2),
                "wall_ms": round(wall * 1000, 2),
                "objects_walked": _walked[0],
                "collected": info["collected"],
                "thread": threading.current_thread().name,
            }
        )
        _slowest.sort(key=lambda c: -c["cpu_ms"])
        del _slowest[10:]


def _write() -> None:
    stats = {}
    for generation, pauses in _pauses.items():
        pauses.sort()
        cpu = sorted(_cpu[generation])
        stats[f"gen{generation}"] = {
            "cpu_max_ms": round(cpu[-1] * 1000, 2) if cpu else None,
            "collections": len(pauses),
            "total_ms": round(sum(pauses) * 1000, 1),
            "p99_ms": round(pauses[int(len(pauses) * 0.99)] * 1000, 2)
            if pauses
            else None,
            "max_ms": round(pauses[-1] * 1000, 2) if pauses else None,
        }
    stats["objects_tracked_at_exit"] = len(gc.get_objects())
    stats["slowest"] = _slowest
    with open(os.environ["GC_PROBE_OUTPUT"], "w") as out:
        json.dump(stats, out)


def _count_redis() -> None:
    from redis import connection
    from redis.asyncio import connection as aio_connection

    def counted(pack: Any) -> Any:
        def pack_counted(self: Any, *args: Any) -> Any:
            packed = pack(self, *args)
            _redis_calls[args[0]] += 1  # the name is read when the counts are
            _redis_bytes[0] += sum(map(len, packed))
            return packed

        return pack_counted

    # Every command goes through one of these (pipelines too, one per command).
    for serializer in (
        connection.PythonRespSerializer,
        connection.HiredisRespSerializer,
    ):
        serializer.pack = counted(serializer.pack)
    aio = aio_connection.AbstractConnection
    aio.pack_command = counted(aio.pack_command)


async def _send_redis_counts(send: Any) -> None:
    by_command: Counter[str] = Counter()
    for first, count in list(_redis_calls.items()):
        name = first.split()[0] if first else "?"
        if isinstance(name, bytes):
            name = name.decode()
        by_command[name.lower()] += count
    counts = {
        "commands": by_command.total(),
        "bytes": _redis_bytes[0],
        "by_command": dict(by_command.most_common()),
    }
    body = json.dumps(counts).encode()
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def application(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "lifespan":
        _serving[0] = True
        if scope["type"] == "http" and scope["path"] == REDIS_PATH:
            await _send_redis_counts(send)
            return
        await app(scope, receive, send)
        return

    async def send_then_write(message: Any) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            _write()
        await send(message)

    await app(scope, receive, send_then_write)


gc.callbacks.append(_record)
if os.environ.get("GC_PROBE_REDIS") == "1":
    _count_redis()
