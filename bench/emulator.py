"""The Agents emulator as the benchmark's upstream: `python bench/emulator.py --port N`.

The same server as `python -m emulator` (emulator.AgentsEmulator), with
two changes that keep the load generator out of the measurement: it runs on uvloop,
and it listens with a deep accept queue (aiohttp's default of 128 drops SYNs when
1,000 app connections arrive at once, and each drop costs the app a 1 s retry).
It prints its endpoint on one line once it listens, then serves until SIGTERM.
"""

import argparse
import asyncio
import functools
import signal
import sys
from pathlib import Path

import uvloop
from aiohttp import web

# Appended, so a PYTHONPATH entry can supply another copy of the emulator; the
# script's own folder goes, as this file's name would shadow the package.
BENCH = Path(__file__).resolve().parent
sys.path = [entry for entry in sys.path if Path(entry).resolve() != BENCH]
sys.path.append(str(BENCH.parent))

from emulator import AgentsEmulator  # noqa: E402

BACKLOG = 4096


async def serve(port: int) -> None:
    # AgentsEmulator.start() builds its TCPSite with aiohttp's default backlog.
    web.TCPSite = functools.partial(web.TCPSite, backlog=BACKLOG)  # type: ignore[misc]
    emulator = AgentsEmulator()
    await emulator.start("127.0.0.1", port)
    print(emulator.endpoint, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
