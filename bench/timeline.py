"""A burst of new chats, step by step: when each request was sent, reached the
view, had its turn stored, got its first upstream event, sent and received its
first chunk, all on one clock (`time.monotonic`, CLOCK_MONOTONIC, which the
server's `perf_counter` shares on Linux).

    .venv/bin/python bench/timeline.py [--streams 100] [--rounds 3]
        [--tokens 100 --interval 0.05] [--experiment NAME ...]

Starts the emulator (on the load's CPU) and chatsite under uvicorn (on the app's
CPU, SQLite in a temporary directory, or the PostgreSQL server of DATABASE_URL)
with the `timeline` experiment (bench/experiments.py), sends `--streams` chats at
once, `--rounds` times after a warm-up, and prints per step the milliseconds
from the first request sent: min, p10, p50, p90, max. Where the first chunks of a
burst wait shows there: on the turn's write, on the upstream, on the loop.
"""

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import servers
from load import Load, Stream, client_session
from run import EXPERIMENT, Emulator, start_server
from servers import LOAD_CPU

STEPS = (
    "client_sent",
    "view",
    "turn_begun",
    "turn_stored",
    "upstream_first_event",
    "headers_in",
    "first_chunk_out",
    "first_chunk_in",
)


async def _burst(url: str, streams: int) -> list[Stream]:
    async with client_session(streams + 10) as session:
        return await Load(url, streams, ramp=0, timeout=120).run(session)


def _server_steps(pid: int, output: Path) -> dict[str, Any]:
    """What the server recorded since the last call (the experiment's SIGUSR2)."""
    output.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    for _ in range(200):
        if output.exists():  # the experiment renames it into place, whole
            return json.loads(output.read_text())
        time.sleep(0.05)
    raise RuntimeError("the server wrote no timeline")


def _row(step: str, times: list[float], origin: float) -> str:
    ms = sorted((t - origin) * 1000 for t in times)
    n = len(ms)

    def at(q: float) -> float:
        return ms[min(n - 1, int(q * n))]

    return (
        f"  {step:22s} n={n:4d}  min {ms[0]:7.1f}  p10 {at(0.1):7.1f}  "
        f"p50 {at(0.5):7.1f}  p90 {at(0.9):7.1f}  max {ms[-1]:7.1f}"
    )


async def measure(args: argparse.Namespace, log_dir: Path) -> None:
    emulator_process, base = servers.start_emulator(log_dir, LOAD_CPU)
    database = servers.prepare_database(os.environ.get("DATABASE_URL", ""))
    output = log_dir / "timeline.json"
    # The server's environment is this process's (servers.app_env).
    os.environ["TIMELINE_OUTPUT"] = str(output)
    server = None
    try:
        async with client_session(4) as session:
            emulator = Emulator(base, session)
            server = start_server(
                EXPERIMENT,
                servers.SHIPPED_LOOP,
                emulator,
                database.url,
                True,
                ",".join(["timeline", *args.experiments]),
            )
            await emulator.prepare(args.tokens, args.interval)
        pid = server.process.pid
        await _burst(server.url, min(args.streams, 20))  # imports, connections
        await asyncio.to_thread(_server_steps, pid, output)
        print(
            f"{args.streams} chats at once, {args.tokens} tokens {args.interval:g} s "
            f"apart, {database.label}; ms after the first request was sent"
        )
        for number in range(1, args.rounds + 1):
            sent = await _burst(server.url, args.streams)
            await asyncio.sleep(0.5)
            steps: dict[str, Any] = await asyncio.to_thread(_server_steps, pid, output)
            steps["client_sent"] = [s.started for s in sent]
            steps["headers_in"] = [s.headers_at for s in sent if s.headers_at]
            steps["first_chunk_in"] = [
                s.first_chunk_at for s in sent if s.first_chunk_at
            ]
            failed = [s.error for s in sent if not s.ok]
            print(f"round {number}: {len(sent) - len(failed)} ok, {len(failed)} failed")
            if failed:
                print(f"  first failure: {failed[0]}")
            origin = min(s.started for s in sent)
            for step in STEPS:
                if steps.get(step):
                    print(_row(step, steps[step], origin))
    finally:
        if server is not None:
            server.process.stop()
        emulator_process.stop()
        database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument(
        "--experiment",
        dest="experiments",
        action="append",
        default=[],
        help="another experiment of bench/experiments.py to apply (repeatable)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="timeline-") as log_dir:
        asyncio.run(measure(args, Path(log_dir)))


if __name__ == "__main__":
    sys.exit(main())
