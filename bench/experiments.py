"""Proposed changes to chatsite's hot paths, applied by monkeypatching so the
benchmark can measure them before anyone edits the app (target `chatsite+exp`).

BENCH_EXPERIMENTS names the ones to apply, comma-separated:

- `gc`: once the app is loaded, `gc.freeze()` moves its ~100k long-lived objects
  out of the collector's view and the gen-0 threshold goes from 2,000 to 20,000
  allocations, so a full collection with 1,000 open streams walks far fewer
  objects and young collections run a tenth as often.
- `tracemalloc` (diagnostic, slows the app): traces allocations from startup;
  SIGUSR2 writes the live Python memory by file and line to TRACEMALLOC_OUTPUT.
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
    "gc": gc_tuning,
    "tracemalloc": trace_memory,
}
