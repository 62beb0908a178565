"""Soak: 500 concurrent chat streams for 60 s against uvicorn, the Agents emulator
and PostgreSQL, opening a new stream as each one ends.

    python bench/soak.py [--streams 500] [--seconds 60] [--tokens 50 --interval 0.1]
                         [--warm-up SECONDS]

Pass: zero errors; every stream ends with `done`; every reply is stored, complete,
with exactly the text the client received (the emulator's deterministic reply);
RSS stays within 10 % of its level at the end of the warm-up while the load runs,
and no garbage collection takes more than 50 ms of CPU (every one is timed,
bench/gc_probe.py; its wall time, which also counts whatever else ran on the
core, is shown beside it); and the server gives back what the load took: 10 s
after the last stream its asyncio tasks, open replies, threads and database
connections are back to idle, and its RSS has stopped growing. Writes
bench/results/soak.json. `--seconds 1800` is the half-hour soak.

The server runs as in production (DJANGO_DEBUG=0, the azure_agents backend through
the real SDK, psycopg's pool, uvloop, httptools), with rate limits off (every
stream comes from one address) and upstream retries off.
"""

import argparse
import asyncio
import json
import os
import platform
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import psycopg
import servers
from load import Stream, client_session, run_stream

# Run as a script: the repository root, for the test support's /proc readers.
sys.path.append(str(servers.ROOT))

from testing.procfs import established_tcp

RESULTS = servers.BENCH / "results"
SOAK_DATABASE = "soak_chatsite"
DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
SAMPLE_EVERY = 1.0
SETTLE_SECONDS = 10.0
# aiohttp closes an upstream connection idle for 15 s (TCPConnector's
# keepalive_timeout) at its next cleanup, which runs every 15 s: at most 30 s.
KEEPALIVE_EXPIRY_SECONDS = 31.0
STREAM_TIMEOUT = 60.0
# Issue targets: RSS within 10 % after the warm-up, no collection over 50 ms.
FLAT_RSS_RATIO = 0.10
MAX_GC_PAUSE_MS = 50
MB = 1024 * 1024


@dataclass
class Counter:
    open: int = 0
    peak: int = 0
    started: int = 0

    def opened(self, stream: Stream) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def closed(self, stream: Stream) -> None:
        self.open -= 1


@dataclass
class Samples:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, pid: int, origin: float, counter: Counter | None) -> dict[str, Any]:
        reading = servers.sample(pid)
        row = {
            "t": round(reading.at - origin, 1),
            "rss_mb": round(reading.rss / MB, 1),
            "threads": reading.threads,
            "fds": reading.fds,
            "open_streams": counter.open if counter else 0,
        }
        self.rows.append(row)
        return row


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def runtime_counts(process: servers.Process) -> dict[str, Any] | None:
    """The server's SIGUSR1 count line (chat.lifecycle), if it has the feature:
    without it, SIGUSR1 would kill the server."""
    if "SIGUSR1" not in (servers.ROOT / "chat" / "lifecycle.py").read_text():
        return None
    before = process.log_path.read_text().count('"runtime counts"')
    process.popen.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            line
            for line in process.log_path.read_text().splitlines()
            if '"runtime counts"' in line
        ]
        if len(lines) > before:
            counts = json.loads(lines[-1])
            return {
                key: counts[key] for key in ("asyncio_tasks", "open_replies", "threads")
            }
        time.sleep(0.05)
    return None


def socket_peers(pid: int) -> dict[int, int]:
    """The process's established TCP connections, counted by remote port."""
    peers: dict[int, int] = {}
    for _local, remote in established_tcp(pid):
        peers[remote] = peers.get(remote, 0) + 1
    return peers


def fd_census(pid: int, emulator_port: int, db_port: int) -> dict[str, int]:
    total = len(os.listdir(f"/proc/{pid}/fd"))
    peers = socket_peers(pid)
    upstream, database = peers.get(emulator_port, 0), peers.get(db_port, 0)
    return {
        "total": total,
        "upstream_sockets": upstream,
        "db_sockets": database,
        "other": total - upstream - database,
    }


def database_connections(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(state, ''), count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "GROUP BY 1"
        ).fetchall()
    return {state or "unknown": count for state, count in rows}


def stored_replies(database_url: str) -> dict[str, tuple[str, str]]:
    """(status, content) of every assistant message, by conversation id."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT conversation_id::text, status, content FROM chat_message "
            "WHERE role = 'assistant'"
        ).fetchall()
    return {conversation: (status, content) for conversation, status, content in rows}


async def soak(
    url: str, pid: int, *, streams: int, seconds: float, ramp: float
) -> tuple[list[Stream], Samples, Counter, float]:
    """Keeps `streams` replies open for `seconds`; returns when the last ends."""
    counter = Counter()
    samples = Samples()
    finished: list[Stream] = []
    origin = time.monotonic()
    stop_starting = origin + seconds

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        await asyncio.sleep(ramp * n / streams)
        while time.monotonic() < stop_starting:
            stream = Stream()
            counter.started += 1
            await run_stream(
                session, url, stream, STREAM_TIMEOUT, counter.opened, counter.closed
            )
            finished.append(stream)

    async def sampler() -> None:
        while True:
            samples.add(pid, origin, counter)
            await asyncio.sleep(SAMPLE_EVERY)

    async with client_session(streams + 50) as session:
        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker(session, n) for n in range(streams)))
        sampling.cancel()
    return finished, samples, counter, time.monotonic() - origin


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summarize(
    finished: list[Stream],
    stored: dict[str, tuple[str, str]],
    expected_text: str,
) -> dict[str, Any]:
    errors: dict[str, int] = {}
    wrong_text = not_stored = wrong_store = 0
    for stream in finished:
        if not stream.ok:
            reason = (stream.error or f"HTTP {stream.status}")[:120]
            errors[reason] = errors.get(reason, 0) + 1
            continue
        if stream.text != expected_text or stream.final_text != expected_text:
            wrong_text += 1
        row = stored.get(stream.conversation_id or "")
        if row is None:
            not_stored += 1
        elif row != ("complete", stream.text):
            wrong_store += 1
    durations = [
        s.ended_at - s.started for s in finished if s.ok and s.ended_at is not None
    ]
    ttfc = [
        (s.first_chunk_at - s.started) * 1000
        for s in finished
        if s.ok and s.first_chunk_at is not None
    ]
    return {
        "streams_completed": sum(s.ok for s in finished),
        "errors": sum(errors.values()),
        "error_reasons": errors,
        "client_text_mismatches": wrong_text,
        "replies_not_stored": not_stored,
        "replies_stored_wrong": wrong_store,
        "replies_stored": len(stored),
        "stream_seconds_p50": round(percentile(durations, 50) or 0, 3),
        "stream_seconds_p99": round(percentile(durations, 99) or 0, 3),
        "ttfc_ms_p50": round(percentile(ttfc, 50) or 0, 1),
        "ttfc_ms_p99": round(percentile(ttfc, 99) or 0, 1),
    }


def rss_trend(samples: Samples, seconds: float) -> float | None:
    """Least-squares slope of RSS (MB/min) over the second half of the load."""
    points = [
        (row["t"], row["rss_mb"])
        for row in samples.rows
        if seconds / 2 <= row["t"] <= seconds
    ]
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_r = sum(r for _, r in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (r - mean_r) for t, r in points)
    return round(cov / var * 60, 2) if var else None


def rss_after_warm_up(samples: Samples, warm_up: float, seconds: float) -> dict:
    """RSS while the load runs, from the end of its warm-up: flat when the
    highest sample is within FLAT_RSS_RATIO of the first."""
    rows = [r["rss_mb"] for r in samples.rows if warm_up <= r["t"] <= seconds]
    if not rows:
        return {"first_mb": None, "max_mb": None, "growth": None}
    return {
        "first_mb": rows[0],
        "max_mb": max(rows),
        "growth": round(max(rows) / rows[0] - 1, 3),
    }


def table(report: dict[str, Any]) -> str:
    r, m, f = report["result"], report["memory"], report["fds"]
    rows = [
        ("streams opened (concurrent target)", f"{report['config']['streams']}"),
        ("peak concurrent streams", f"{report['load']['peak_open']}"),
        ("streams completed", f"{r['streams_completed']}"),
        ("errors", f"{r['errors']}"),
        (
            "text mismatches (client / stored)",
            f"{r['client_text_mismatches']} / {r['replies_stored_wrong']}",
        ),
        ("replies not stored", f"{r['replies_not_stored']}"),
        (
            "stream duration p50 / p99 (s)",
            f"{r['stream_seconds_p50']} / {r['stream_seconds_p99']}",
        ),
        ("first chunk p50 / p99 (ms)", f"{r['ttfc_ms_p50']} / {r['ttfc_ms_p99']}"),
        (
            "server RSS idle / peak / after 10 s (MB)",
            f"{m['idle_rss_mb']} / {m['peak_rss_mb']} / {m['settled_rss_mb']}",
        ),
        ("RSS trend, 2nd half of the load (MB/min)", f"{m['rss_trend_mb_per_min']}"),
        (
            f"RSS after {report['config']['warm_up']:g} s warm-up: first / max (MB)",
            f"{m['after_warm_up']['first_mb']} / {m['after_warm_up']['max_mb']}"
            f" (+{(m['after_warm_up']['growth'] or 0) * 100:.1f} %)",
        ),
        (
            "GC collections gen0 / gen1 / gen2",
            " / ".join(str(_gc(report, g, "collections")) for g in (0, 1, 2)),
        ),
        (
            "longest GC pause gen0 / gen1 / gen2, wall (ms)",
            " / ".join(str(_gc(report, g, "max_ms")) for g in (0, 1, 2)),
        ),
        (
            "longest GC pause gen0 / gen1 / gen2, CPU (ms)",
            " / ".join(str(_gc(report, g, "cpu_max_ms")) for g in (0, 1, 2)),
        ),
        (
            "threads idle / peak / after",
            f"{m['idle_threads']} / {m['peak_threads']} / {m['settled_threads']}",
        ),
        (
            "fds idle / peak / after",
            f"{m['idle_fds']} / {m['peak_fds']} / {m['settled_fds']}",
        ),
        (
            "  after: upstream / db sockets / other",
            f"{f['settled']['upstream_sockets']} / {f['settled']['db_sockets']} / "
            f"{f['settled']['other']} (idle: other {f['idle']['other']})",
        ),
        (
            "upstream sockets after keep-alive expiry",
            f"{f['after_keepalive_expiry']['upstream_sockets']}",
        ),
        (
            "asyncio tasks idle / after",
            f"{_get(report, 'idle_counts', 'asyncio_tasks')}"
            f" / {_get(report, 'settled_counts', 'asyncio_tasks')}",
        ),
        ("open replies after", f"{_get(report, 'settled_counts', 'open_replies')}"),
        (
            "DB connections idle / after",
            f"{report['db_idle']} / {report['db_settled']}",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines.append(f"{'verdict':<{width}}  {'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def _gc(report: dict[str, Any], generation: int, field_name: str) -> Any:
    stats = (report.get("gc") or {}).get(f"gen{generation}")
    return stats.get(field_name) if stats else "n/a"


def _get(report: dict[str, Any], key: str, field_name: str) -> Any:
    counts = report.get(key)
    return counts.get(field_name) if counts else "n/a"


def verdict(report: dict[str, Any]) -> list[str]:
    r, m = report["result"], report["memory"]
    problems = []
    if r["errors"]:
        problems.append(f"{r['errors']} streams failed: {r['error_reasons']}")
    if r["client_text_mismatches"] or r["replies_stored_wrong"]:
        problems.append("a reply's text differs from the emulator's")
    if r["replies_not_stored"]:
        problems.append(f"{r['replies_not_stored']} replies were not stored")
    if report["load"]["peak_open"] < report["config"]["streams"] * 0.95:
        problems.append(f"only {report['load']['peak_open']} streams were open at once")
    if m["settled_rss_mb"] > m["peak_rss_mb"]:
        problems.append("RSS grew after the load ended")
    growth = m["after_warm_up"]["growth"]
    if growth is not None and growth > FLAT_RSS_RATIO:
        problems.append(
            f"RSS grew {growth * 100:.1f} % after the warm-up "
            f"(more than {FLAT_RSS_RATIO * 100:g} %)"
        )
    # The collector's own time: its wall time also counts whatever else ran on
    # the app's core meanwhile (shown beside it).
    for generation in (0, 1, 2):
        longest = _gc(report, generation, "cpu_max_ms")
        if isinstance(longest, int | float) and longest > MAX_GC_PAUSE_MS:
            problems.append(
                f"a gen{generation} collection took {longest} ms of CPU "
                f"(more than {MAX_GC_PAUSE_MS} ms)"
            )
    if m["settled_threads"] > m["idle_threads"]:
        problems.append("threads were left behind")
    fds = report["fds"]
    # Pooled upstream sockets may outlive the load by aiohttp's keep-alive time;
    # anything else must be back to idle, and those sockets gone after it.
    if fds["settled"]["other"] > fds["idle"]["other"] + 5:
        problems.append(f"file descriptors were left behind: {fds}")
    if fds["after_keepalive_expiry"]["upstream_sockets"]:
        problems.append(f"upstream connections were left open: {fds}")
    idle, settled = report.get("idle_counts"), report.get("settled_counts")
    if idle and settled:
        if settled["asyncio_tasks"] > idle["asyncio_tasks"]:
            problems.append("asyncio tasks were left behind")
        if settled["open_replies"]:
            problems.append("replies are still open")
    if report["db_settled"].get("active", 0) or report["db_settled"].get(
        "idle in transaction", 0
    ):
        problems.append(f"database connections still busy: {report['db_settled']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--ramp", type=float, default=5.0)
    parser.add_argument(
        "--warm-up",
        type=float,
        default=None,
        help="seconds before RSS must stay flat (default: a third of the run, "
        "at most 300)",
    )
    parser.add_argument(
        "--loop", choices=sorted(servers.UVICORN_LOOPS), default=servers.SHIPPED_LOOP
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("SOAK_POSTGRES_URL", DEFAULT_POSTGRES),
        help="PostgreSQL server to create soak_chatsite on",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    args = parser.parse_args()

    fd_limit = raise_fd_limit()
    log_dir = RESULTS / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    pin = servers.can_pin()
    database_url = servers.prepare_database(args.postgres, SOAK_DATABASE).url
    emulator, emulator_base = servers.start_emulator(
        log_dir, servers.LOAD_CPU if pin else None
    )
    if pin:
        os.sched_setaffinity(0, {servers.LOAD_CPU})
    port = servers.free_port()
    warm_up = args.warm_up if args.warm_up is not None else min(300, args.seconds / 3)
    # gc_probe times every collection of the app's (bench/gc_probe.py).
    argv = servers.uvicorn_argv(
        "gc_probe:application", port, loop=args.loop, app_dir=servers.BENCH
    )
    gc_output = log_dir / f"soak-gc-{port}.json"
    # The log keeps WARNING and up: the SIGUSR1 count line, and any traceback.
    env = servers.app_env(f"{emulator_base}/api/projects/emulator", database_url)
    env.update(
        GC_PROBE_APP="chatsite.asgi:application",
        GC_PROBE_OUTPUT=str(gc_output),
        GC_PROBE_WALKED="1",
    )
    server = servers.Process(
        f"soak-{port}",
        argv,
        env=env,
        cpu=servers.APP_CPU if pin else None,
        log_dir=log_dir,
    )
    base = f"http://127.0.0.1:{port}"
    report: dict[str, Any] = {}
    try:
        servers.wait_http(f"{base}/api/health", server)
        asyncio.run(
            servers.configure_emulator(emulator_base, args.tokens, args.interval)
        )
        expected = " ".join(f"tok{i}" for i in range(args.tokens))
        # Warm up (backend client, pool, sync threads), then measure idle.
        warm, _, _, _ = asyncio.run(
            soak(f"{base}/api/chat", server.pid, streams=20, seconds=1, ramp=0)
        )
        time.sleep(2)
        emulator_port = urlsplit(emulator_base).port or 80
        db_port = urlsplit(database_url).port or 5432
        idle = servers.sample(server.pid)
        idle_fds = fd_census(server.pid, emulator_port, db_port)
        idle_counts = runtime_counts(server)
        db_idle = database_connections(database_url)

        print(
            f"soak: {args.streams} streams for {args.seconds:g} s "
            f"({args.tokens} tokens, {args.interval:g} s apart)...",
            flush=True,
        )
        finished, samples, counter, elapsed = asyncio.run(
            soak(
                f"{base}/api/chat",
                server.pid,
                streams=args.streams,
                seconds=args.seconds,
                ramp=args.ramp,
            )
        )
        time.sleep(SETTLE_SECONDS)
        settled = servers.sample(server.pid)
        settled_fds = fd_census(server.pid, emulator_port, db_port)
        settled_counts = runtime_counts(server)
        db_settled = database_connections(database_url)
        time.sleep(KEEPALIVE_EXPIRY_SECONDS - SETTLE_SECONDS)
        expired_fds = fd_census(server.pid, emulator_port, db_port)
        stored = stored_replies(database_url)
        peak = max(samples.rows, key=lambda row: row["rss_mb"])
        report = {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": {
                "streams": args.streams,
                "seconds": args.seconds,
                "tokens": args.tokens,
                "interval": args.interval,
                "ramp": args.ramp,
                "warm_up": warm_up,
                "stream_timeout": STREAM_TIMEOUT,
                "settle_seconds": SETTLE_SECONDS,
                "database": f"PostgreSQL {SOAK_DATABASE}",
                "server": " ".join(argv[1:]),
                "pinned": pin,
                "fd_limit": fd_limit,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            },
            "load": {
                "wall_seconds": round(elapsed, 1),
                "peak_open": counter.peak,
                "streams_started": counter.started,
                "warm_up_streams": len(warm),
            },
            "result": summarize(finished, stored, expected),
            "memory": {
                "idle_rss_mb": round(idle.rss / MB, 1),
                "peak_rss_mb": peak["rss_mb"],
                "settled_rss_mb": round(settled.rss / MB, 1),
                "rss_trend_mb_per_min": rss_trend(samples, args.seconds),
                "after_warm_up": rss_after_warm_up(samples, warm_up, args.seconds),
                "idle_threads": idle.threads,
                "peak_threads": max(row["threads"] for row in samples.rows),
                "settled_threads": settled.threads,
                "idle_fds": idle.fds,
                "peak_fds": max(row["fds"] for row in samples.rows),
                "settled_fds": settled.fds,
            },
            "fds": {
                "idle": idle_fds,
                "settled": settled_fds,
                "after_keepalive_expiry": expired_fds,
            },
            "idle_counts": idle_counts,
            "settled_counts": settled_counts,
            "db_idle": db_idle,
            "db_settled": db_settled,
            "samples": samples.rows,
        }
    finally:
        exit_code = server.stop()
        emulator.stop()
    if gc_output.exists():
        report["gc"] = json.loads(gc_output.read_text())
    log = server.log_path.read_text()
    report["server_exit_code"] = exit_code
    report["server_log_problems"] = [
        problem
        for problem in ("Traceback", "Task was destroyed", "Unclosed", "ERROR")
        if problem in log
    ]
    problems = verdict(report)
    if exit_code not in (0, -signal.SIGTERM):
        problems.append(f"the server exited with {exit_code}")
    if report["server_log_problems"]:
        problems.append(f"server log: {report['server_log_problems']}")
    report["problems"] = problems
    report["passed"] = not problems
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    print(f"report: {args.output}; server log: {server.log_path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
