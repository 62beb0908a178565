"""An ASGI app with the garbage collector's pauses recorded.

`uvicorn gc_probe:application --app-dir bench` serves the app named by
GC_PROBE_APP ("module:attribute"); a `gc.callbacks` hook times every collection,
and the totals per generation go to GC_PROBE_OUTPUT (JSON) at lifespan shutdown
(uvicorn ends by re-raising SIGTERM, so atexit would never run). The hook runs
only when the collector does, and requests pass through one extra await.
"""

import gc
import importlib
import json
import os
import time
from typing import Any

module_name, _, attribute = os.environ["GC_PROBE_APP"].partition(":")
app = getattr(importlib.import_module(module_name), attribute)
if os.environ.get("BENCH_EXPERIMENTS"):
    import experiments

    experiments.apply()

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_started = 0.0


def _record(phase: str, info: dict[str, Any]) -> None:
    global _started
    if phase == "start":
        _started = time.perf_counter()
    else:
        _pauses[info["generation"]].append(time.perf_counter() - _started)


def _write() -> None:
    stats = {}
    for generation, pauses in _pauses.items():
        pauses.sort()
        stats[f"gen{generation}"] = {
            "collections": len(pauses),
            "total_ms": round(sum(pauses) * 1000, 1),
            "p99_ms": round(pauses[int(len(pauses) * 0.99)] * 1000, 2)
            if pauses
            else None,
            "max_ms": round(pauses[-1] * 1000, 2) if pauses else None,
        }
    stats["objects_tracked_at_exit"] = len(gc.get_objects())
    with open(os.environ["GC_PROBE_OUTPUT"], "w") as out:
        json.dump(stats, out)


async def application(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "lifespan":
        await app(scope, receive, send)
        return

    async def send_then_write(message: Any) -> None:
        if message["type"] == "lifespan.shutdown.complete":
            _write()
        await send(message)

    await app(scope, receive, send_then_write)


gc.callbacks.append(_record)
