"""Bursts of new chats, alternated between targets: what a change does to a
burst's first chunks and to the CPU a new chat costs.

One burst of 100 at once is one sample of a noisy figure (`run.py`'s c100 moves
by a third from run to run). Here each run starts a fresh server per target, as
`run.py` does (same settings, pinned to the app's CPU), warms it up, then sends
`--bursts` bursts of `--streams` one-token chats, and reads the server's CPU
from /proc between the first and the last. Targets are alternated run by run,
so that a slow minute of the machine falls on both.

    .venv/bin/python bench/bursts.py --runs 3
    .venv/bin/python bench/bursts.py --targets chatsite,chatsite+exp --experiments NAME
    .venv/bin/python bench/bursts.py --targets chatsite --cprofile /tmp/burst.prof
    .venv/bin/python bench/bursts.py --runs 1 --pyspy /tmp/bursts

Per run: end-to-end TTFC p50 and p99 over all its chats, the median of the
bursts' own p50s, and the server's CPU per chat. `--cprofile FILE` profiles the
event loop's thread over the bursts of the first run (the `cprofile`
experiment; slower, so its other figures are not the ones to read); `--pyspy
PREFIX` samples it with py-spy instead and summarizes where the loop's time went
(`pyspy.py`; it pauses the process per sample, so that run's figures are not the
ones to read either).
"""

import argparse
import asyncio
import os
import signal
import statistics
from pathlib import Path

import aiohttp
import pyspy
import run
import servers
from load import Load, Stream, client_session


async def once(
    args: argparse.Namespace,
    target: str,
    emulator: run.Emulator,
    database_url: str,
    profile: str,
    spy: str,
) -> dict[str, float]:
    experiments = args.experiments
    if profile:
        os.environ["CPROFILE_OUTPUT"] = profile
        experiments = ",".join(filter(None, [experiments, "cprofile"]))
        target = run.EXPERIMENT
    redis_url = args.redis_url if target == run.REDIS else ""
    if redis_url:
        run.BenchRedis(redis_url).flush()
    server = run.start_server(
        target,
        run.loop_of(target),
        emulator,
        database_url,
        True,
        experiments,
        redis_url,
    )
    pid = server.process.pid
    ttfc: list[float] = []
    p50s: list[float] = []
    try:
        async with client_session(args.streams + 10) as session:
            await emulator.prepare(tokens=5, interval=0)
            # Imports, the upstream client, the first connections (run.py: 3).
            for _ in range(args.warmup):
                await Load(server.url, 1, ramp=0, timeout=60).run(session)
            await emulator.prepare(tokens=args.tokens, interval=args.interval)
            await asyncio.sleep(0.5)
            if profile:
                os.kill(pid, signal.SIGUSR2)
            sampler = None
            if spy:
                raw = Path(spy)
                sampler = pyspy.start(pid, raw, raw.with_suffix(".log"), None)
                await asyncio.sleep(1.0)  # py-spy attaching
            before = servers.sample(pid).cpu
            for _ in range(args.bursts):
                streams: list[Stream] = await Load(
                    server.url, args.streams, ramp=0, timeout=120
                ).run(session)
                failed = [s.error for s in streams if not s.ok]
                if failed:
                    raise SystemExit(f"{len(failed)} chats failed: {failed[0]}")
                times = [(s.first_chunk_at or 0) - s.started for s in streams]
                ttfc += times
                p50s.append(statistics.median(times))
                await asyncio.sleep(args.pause)
            cpu = servers.sample(pid).cpu - before
            if sampler is not None:
                pyspy.stop(sampler)
                _, summary = pyspy.summarize(Path(spy), f"{target}, bursts")
                Path(spy).with_suffix(".txt").write_text(summary)
                print(f"py-spy summary: {Path(spy).with_suffix('.txt')}")
            if profile:
                os.kill(pid, signal.SIGUSR2)
                await asyncio.sleep(1.0)
    finally:
        server.process.stop()
    chats = args.bursts * args.streams
    return {
        "p50": 1000 * statistics.median(ttfc),
        "p99": 1000 * (run.pct(ttfc, 99) or 0.0),
        "burst_p50": 1000 * statistics.median(p50s),
        "cpu_ms": 1000 * cpu / chats,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bursts", type=int, default=8)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.0, help="between tokens")
    parser.add_argument(
        "--warmup", type=int, default=20, help="chats, one at a time, before"
    )
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between two bursts"
    )
    parser.add_argument(
        "--targets",
        default=run.OURS,
        help=f"comma-separated, of {run.OURS}, {run.EXPERIMENT}, {run.REDIS}, "
        f"{run.REFERENCE}",
    )
    parser.add_argument("--experiments", default="", help="for chatsite+exp")
    parser.add_argument("--cprofile", default="", help="profile file to write")
    parser.add_argument(
        "--pyspy",
        default="",
        help="py-spy the first run's bursts: PREFIX.TARGET.raw and .txt (a summary)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/10")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    database = servers.prepare_database(os.environ.get("DATABASE_URL", ""))
    emulator_process, base = servers.start_emulator(run.RESULTS / "logs", run.LOAD_CPU)
    results: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    try:
        async with aiohttp.ClientSession() as control:
            emulator = run.Emulator(base, control)
            for n in range(args.runs):
                for target in targets:
                    profile = args.cprofile if n == 0 else ""
                    spy = f"{args.pyspy}.{target}.raw" if args.pyspy and n == 0 else ""
                    figures = await once(
                        args, target, emulator, database.url, profile, spy
                    )
                    results[target].append(figures)
                    print(
                        f"run {n + 1} {target}: TTFC p50 {figures['p50']:.1f} ms, "
                        f"p99 {figures['p99']:.1f} ms, bursts' p50 median "
                        f"{figures['burst_p50']:.1f} ms; CPU per chat "
                        f"{figures['cpu_ms']:.2f} ms",
                        flush=True,
                    )
    finally:
        emulator_process.stop()
        database.close()
    print(
        f"{args.bursts} bursts of {args.streams} chats of {args.tokens} token(s), "
        f"{database.label}; min / median / max over {args.runs} runs"
    )
    for target, runs in results.items():
        line = [f"  {target:16s}"]
        for key, label in (
            ("p50", "TTFC p50"),
            ("p99", "p99"),
            ("cpu_ms", "CPU ms per chat"),
        ):
            values = [r[key] for r in runs]
            line.append(
                f"{label} {min(values):.1f} / {statistics.median(values):.1f} / "
                f"{max(values):.1f}"
            )
        print(", ".join(line))


if __name__ == "__main__":
    asyncio.run(main())
