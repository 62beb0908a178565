"""RSS per open stream, repeated: what `run.py`'s c100 measures, several times.

Each run starts a fresh server as `run.py` does (same settings, pinned to the
app's CPU), warms it up with three chats, then opens `--streams` at once and
reads the server's RSS at the last moment all of them are open, less its RSS
before. Two readings: /proc/PID/stat (what `run.py` reports; the kernel updates
it in steps of 32 pages per CPU, 1.3 KiB a stream at 100) and
/proc/PID/smaps_rollup (exact). One burst is one sample of a noisy figure: the
first hundred concurrent streams set the process's high-water mark.

    .venv/bin/python bench/rss.py --runs 4
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test .venv/bin/python bench/rss.py
"""

import argparse
import asyncio
import os
import statistics

import aiohttp
import run
import servers
from load import Load, client_session


def smaps_rss(pid: int) -> int:
    """Bytes resident, exactly (/proc/PID/smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                return int(line.split()[1]) * 1024
    raise OSError("no Rss line")


async def once(
    args: argparse.Namespace, emulator: run.Emulator, database_url: str
) -> tuple[float, float]:
    redis_url = args.redis_url if args.target == run.REDIS else ""
    if redis_url:
        run.BenchRedis(redis_url).flush()
    server = run.start_server(
        args.target,
        run.loop_of(args.target),
        emulator,
        database_url,
        True,
        redis_url=redis_url,
    )
    pid = server.process.pid
    try:
        async with client_session(args.streams + 10) as session:
            await emulator.prepare(tokens=5, interval=0)
            for _ in range(3):  # as run.py: imports, upstream client, first connection
                await Load(server.url, 1, ramp=0, timeout=30).run(session)
            await emulator.prepare(args.tokens, args.interval)
            await asyncio.sleep(1.0)
            idle, idle_exact = servers.sample(pid).rss, smaps_rss(pid)
            load = Load(server.url, args.streams, ramp=0, timeout=120)
            task = asyncio.create_task(load.run(session))
            open_ = None
            while not task.done():
                await asyncio.sleep(run.SAMPLE_EVERY)
                if load.open >= args.streams:
                    open_ = (servers.sample(pid).rss, smaps_rss(pid))
            streams = await task
    finally:
        server.process.stop()
    if open_ is None or not all(s.ok for s in streams):
        raise SystemExit("not every stream was open at once, or one failed")
    per = 1024 * args.streams
    return (open_[0] - idle) / per, (open_[1] - idle_exact) / per


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument(
        "--target", default=run.OURS, choices=[run.OURS, run.REDIS, run.REFERENCE]
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    args = parser.parse_args()
    database = servers.prepare_database(os.environ.get("DATABASE_URL", ""))
    emulator_process, base = servers.start_emulator(run.RESULTS / "logs", run.LOAD_CPU)
    stat: list[float] = []
    exact: list[float] = []
    try:
        async with aiohttp.ClientSession() as control:
            emulator = run.Emulator(base, control)
            for n in range(args.runs):
                by_stat, by_smaps = await once(args, emulator, database.url)
                stat.append(by_stat)
                exact.append(by_smaps)
                print(
                    f"run {n + 1}: {by_stat:.1f} KiB per open stream "
                    f"(stat), {by_smaps:.1f} (smaps_rollup)",
                    flush=True,
                )
    finally:
        emulator_process.stop()
        database.close()
    for name, values in (("stat", stat), ("smaps_rollup", exact)):
        print(
            f"{args.target}, {database.label}, {args.streams} streams, {name}: "
            f"min {min(values):.1f}, median {statistics.median(values):.1f}, "
            f"max {max(values):.1f} KiB per open stream"
        )


if __name__ == "__main__":
    asyncio.run(main())
