"""The chat relay benchmark: `make bench` (`python bench/run.py`), `make bench-quick`.

Starts the Agents emulator and, per scenario, a fresh server under uvicorn: chatsite
(production settings), chatsite with REDIS_URL set (its reply log copied to a
Redis Stream) and the reference relay (bench/reference_relay.py, the old FastAPI
service). Opens N concurrent SSE streams against each, then prints one table per
scenario with every figure beside the reference's and their ratio, checks the
issues' targets, and writes the whole result as JSON (bench/results/latest.json;
for a full run also bench/latest.json, or the file `--output` names instead)
and the tables as Markdown
(bench/results/latest.md). The `resume` scenario times reconnects instead:
a reply dropped after a few frames, resumed with Last-Event-ID.
bench/README.md explains each figure.
"""

import argparse
import asyncio
import bisect
import functools
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pyspy
import redis_stats
import servers
import uvloop
from load import Load, Stream, client_session
from redis_stats import BenchRedis
from resume import Resumed, resume_once, resume_session
from servers import APP_CPU, BENCH, LOAD_CPU, ROOT, Process, Sample

RESULTS = BENCH / "results"
FD_LIMIT = 65536
SAMPLE_EVERY = 0.2
OURS, REFERENCE = "chatsite", "reference"
REDIS = "chatsite+redis"  # chatsite with REDIS_URL: the reply log mirrored to Redis
# resume only: the reply written by one chatsite+redis replica, resumed on another
REPLICA = "chatsite+redis, other replica"
EXPERIMENT = "chatsite+exp"  # chatsite with bench/experiments.py applied
# resume: the client waits this many token intervals before it reconnects, so
# that frames are waiting to be replayed.
RESUME_GAP_INTERVALS = 3


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    streams: int
    tokens: int
    interval: float  # seconds between deltas
    ramp: float = 0.0  # seconds over which the streams are opened
    rounds: int = 1  # times the streams are opened, one round after the other
    # The event loops compared (burst only; servers.UVICORN_LOOPS).
    loops: tuple[str, ...] = (servers.SHIPPED_LOOP,)
    targets: tuple[str, ...] = (OURS, REDIS, EXPERIMENT, REFERENCE)
    # resume only: data frames read before the client drops the connection;
    # `streams` is then the number of samples, taken one after the other.
    resume_frames: int = 0

    @property
    def stream_seconds(self) -> float:
        return self.tokens * self.interval


SCENARIOS = {
    s.name: s
    for s in [
        Scenario("single", "1 stream at a time, 20 ms tokens", 1, 50, 0.02, rounds=20),
        Scenario("c100", "100 streams opened at once, 50 ms tokens", 100, 100, 0.05),
        Scenario("c500", "500 streams over 5 s, 50 ms tokens", 500, 100, 0.05, 5.0),
        Scenario(
            "hold1000", "1,000 streams over 10 s, 250 ms tokens", 1000, 160, 0.25, 10.0
        ),
        Scenario(
            "hold1000-50ms",
            "1,000 streams over 10 s, 50 ms x 300 tokens",
            1000,
            300,
            0.05,
            10.0,
        ),
        Scenario("fast", "20 streams, 1 ms tokens (throughput)", 20, 2000, 0.001),
        Scenario(
            "resume",
            "reconnect after 3 frames with Last-Event-ID, 200 times, 20 ms tokens",
            200,
            12,
            0.02,
            targets=(OURS, REDIS, REPLICA),
            resume_frames=3,
        ),
        Scenario(
            "burst",
            "1,000 connects at once, chatsite's loop vs uvloop and asyncio's, "
            "3 runs each",
            1000,
            40,
            0.25,
            rounds=3,
            loops=(servers.SHIPPED_LOOP, "uvloop", "asyncio"),
            targets=(OURS,),
        ),
    ]
}
QUICK = {
    "single": replace(SCENARIOS["single"], tokens=20, rounds=4),
    "c100": replace(SCENARIOS["c100"], title="20 streams at once", streams=20),
    "fast": replace(SCENARIOS["fast"], streams=4, tokens=500),
    "resume": replace(
        SCENARIOS["resume"],
        title="reconnect after 3 frames with Last-Event-ID, 30 times, 20 ms tokens",
        streams=30,
    ),
    "burst": replace(SCENARIOS["burst"], streams=200, tokens=10, rounds=1),
}
# Rerun under py-spy with --profile: per-delta costs (fast), per-request costs (c100).
PROFILED = ("fast", "c100")
DEFAULT = [
    "single",
    "c100",
    "c500",
    "hold1000",
    "hold1000-50ms",
    "fast",
    "resume",
    "burst",
]
QUICK_DEFAULT = ["single", "c100", "fast", "resume"]


# --- statistics -------------------------------------------------------------------


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def dist_ms(values: list[float]) -> dict[str, float | int | None]:
    ms = [v * 1000 for v in values]
    out: dict[str, float | int | None] = {"n": len(ms)}
    for name, p in (("p50", 50), ("p90", 90), ("p99", 99)):
        value = pct(ms, p)
        out[name] = None if value is None else round(value, 3)
    out["max"] = round(max(ms), 3) if ms else None
    return out


# --- one measured run -------------------------------------------------------------


class Emulator:
    def __init__(self, base: str, session: aiohttp.ClientSession) -> None:
        self.base = base
        self.endpoint = f"{base}/api/projects/emulator"
        self.session = session

    async def prepare(self, tokens: int, interval: float) -> None:
        await servers.configure_emulator(self.base, tokens, interval, self.session)

    async def deltas(self) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.base}/_emulator/deltas") as r:
            r.raise_for_status()
            return (await r.json())["deltas"]


@dataclass
class Server:
    target: str
    loop: str
    process: Process
    url: str
    port: int
    name: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gc_stats(self) -> dict[str, Any] | None:
        path = RESULTS / "logs" / f"{self.name}-gc.json"
        return json.loads(path.read_text()) if path.exists() else None

    async def redis_counts(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        """The Redis commands and bytes this server has sent (gc_probe.py)."""
        async with session.get(f"{self.base}/_bench/redis") as r:
            r.raise_for_status()
            return await r.json()


def loop_of(target: str, ours: str = servers.SHIPPED_LOOP) -> str:
    """The event loop `target` is served with: the reference relay's is the old
    service's; chatsite's, `ours`."""
    return servers.REFERENCE_LOOP if target == REFERENCE else ours


def start_server(
    target: str,
    loop: str,
    emulator: Emulator,
    database_url: str,
    pin: bool,
    experiments: str = "",
    redis_url: str = "",
) -> Server:
    port = servers.free_port()
    cpu = APP_CPU if pin else None
    name = f"{target.replace(', ', '-').replace(' ', '-')}-{loop}-{port}"
    http = servers.REFERENCE_HTTP if target == REFERENCE else servers.SHIPPED_HTTP
    argv = servers.uvicorn_argv(
        "gc_probe:application", port, loop=loop, app_dir=BENCH, http=http
    )
    if target in (OURS, REDIS, EXPERIMENT):
        uses_redis = target == REDIS
        env = servers.app_env(
            emulator.endpoint, database_url, redis_url if uses_redis else ""
        )
        env["GC_PROBE_APP"] = "chatsite.asgi:application"
        if target == EXPERIMENT:
            env["BENCH_EXPERIMENTS"] = experiments
        if uses_redis:
            env["GC_PROBE_REDIS"] = "1"
    else:
        env = servers.reference_env(emulator.endpoint)
        env["GC_PROBE_APP"] = "reference_relay:app"
    env["GC_PROBE_OUTPUT"] = str(RESULTS / "logs" / f"{name}-gc.json")
    process = Process(name, argv, env=env, cpu=cpu, log_dir=RESULTS / "logs")
    base = f"http://127.0.0.1:{port}"
    servers.wait_http(f"{base}/api/health", process)
    return Server(target, loop, process, f"{base}/api/chat", port, name)


async def sampler(pid: int, load_state: list[Load], out: list[tuple[Sample, int]]):
    while True:
        try:
            reading = servers.sample(pid)
        except OSError:
            return
        out.append((reading, load_state[0].open if load_state else 0))
        await asyncio.sleep(SAMPLE_EVERY)


async def queue_watcher(port: int, out: list[tuple[float, int]]) -> None:
    while True:
        depth = servers.listen_queue(port)
        if depth is not None:
            out.append((time.monotonic(), depth))
        await asyncio.sleep(0.01)


async def measure(
    scenario: Scenario,
    target: str,
    loop: str,
    emulator: Emulator,
    database_url: str,
    pin: bool,
    profile: bool = False,
    experiments: str = "",
    bench_redis: BenchRedis | None = None,
) -> dict[str, Any]:
    redis_url = ""
    if target == REDIS:
        assert bench_redis is not None
        bench_redis.flush()
        redis_url = bench_redis.url
    server = start_server(
        target, loop, emulator, database_url, pin, experiments, redis_url
    )
    pid = server.process.pid
    timeout = scenario.ramp + scenario.stream_seconds + 120
    profiler: subprocess.Popen[bytes] | None = None
    try:
        async with client_session(scenario.streams + 10) as session:
            await emulator.prepare(tokens=5, interval=0)
            for _ in range(3):  # imports, upstream client, first DB connection
                await Load(server.url, 1, ramp=0, timeout=30).run(session)
        await emulator.prepare(scenario.tokens, scenario.interval)
        await asyncio.sleep(1.0)
        idle = servers.sample(pid)
        samples: list[tuple[Sample, int]] = []
        queue: list[tuple[float, int]] = []
        state: list[Load] = []
        watchers = [asyncio.create_task(sampler(pid, state, samples))]
        if scenario.name == "burst":
            watchers.append(asyncio.create_task(queue_watcher(server.port, queue)))
        if profile:
            raw, _ = profile_paths(target, scenario)
            log = RESULTS / "logs" / f"py-spy-{target}.log"
            profiler = pyspy.start(pid, raw, log, servers.pinner(LOAD_CPU))
        streams: list[Stream] = []
        counting = RedisCounting(bench_redis, [server]) if target == REDIS else None
        if counting is not None:
            await counting.begin(emulator.session)
        began = servers.sample(pid)
        cpu0_began = servers.cpu_busy(APP_CPU)
        async with client_session(scenario.streams + 10) as session:
            for _ in range(scenario.rounds):
                load = Load(
                    server.url, scenario.streams, ramp=scenario.ramp, timeout=timeout
                )
                state[:] = [load]
                streams += await load.run(session)
        ended = servers.sample(pid)
        cpu0_busy = servers.cpu_busy(APP_CPU) - cpu0_began
        await asyncio.sleep(1.0)
        after = servers.sample(pid)
        redis_cost = None
        if counting is not None:
            # A second later: the copy of the last frames has reached Redis.
            frames = sum(s.frames for s in streams)
            redis_cost = await counting.end(emulator.session, frames, len(streams))
        for task in watchers:
            task.cancel()
        if profiler is not None:
            pyspy.stop(profiler)
        deltas = await emulator.deltas()
        stored = None
        if target != REFERENCE:
            ids = [s.conversation_id for s in streams if s.conversation_id]
            stored = await asyncio.to_thread(stored_replies, database_url, ids)
    finally:
        if profiler is not None:
            pyspy.stop(profiler)
        code = server.process.stop()
    result = summarize(
        scenario, streams, deltas, stored, idle, began, ended, after, samples, queue
    )
    result.update(target=target, loop=loop, server_exit_code=code)
    result.update(log_warnings(server.process.warnings()))
    if target == EXPERIMENT:
        result["experiments"] = experiments
    if redis_cost is not None:
        result["redis"] = redis_cost
    result["gc"] = server.gc_stats()
    if pin:
        # The app is pinned to this CPU; whatever else ran there competed with it.
        other = cpu0_busy - result["app_cpu_s"]
        result["other_cpu_on_app_core_s"] = round(max(other, 0.0), 2)
    if profile:
        result["profile"] = summarize_profile(target, scenario)
    return result


async def measure_resume(
    scenario: Scenario,
    target: str,
    emulator: Emulator,
    database_url: str,
    pin: bool,
    bench_redis: BenchRedis | None = None,
) -> dict[str, Any]:
    """`scenario.streams` reconnects, one after the other: each reply started,
    dropped after `resume_frames` frames and resumed (resume.py) on the same
    server or, for REPLICA, on a second chatsite+redis server sharing the
    database and Redis."""
    kind = REDIS if target in (REDIS, REPLICA) else target
    redis_url = ""
    if kind == REDIS:
        assert bench_redis is not None
        bench_redis.flush()
        redis_url = bench_redis.url
    loop = servers.SHIPPED_LOOP
    apps = [start_server(kind, loop, emulator, database_url, pin, "", redis_url)]
    gap = RESUME_GAP_INTERVALS * scenario.interval
    timeout = scenario.stream_seconds + 30
    try:
        if target == REPLICA:
            apps.append(
                start_server(kind, loop, emulator, database_url, pin, "", redis_url)
            )
        writer, reader = apps[0], apps[-1]

        async def sample(session: aiohttp.ClientSession) -> Resumed:
            return await resume_once(
                session,
                writer.url,
                reader.base,
                frames=scenario.resume_frames,
                gap=gap,
                timeout=timeout,
            )

        async with resume_session() as session:
            await emulator.prepare(scenario.tokens, scenario.interval)
            for _ in range(3):  # imports, upstream client, first DB connections
                await sample(session)
            await emulator.prepare(scenario.tokens, scenario.interval)
            await asyncio.sleep(0.5)
            counting = RedisCounting(bench_redis, apps) if kind == REDIS else None
            if counting is not None:
                await counting.begin(emulator.session)
            began = [servers.sample(app.process.pid) for app in apps]
            cpu0_began = servers.cpu_busy(APP_CPU)
            samples = [await sample(session) for _ in range(scenario.streams)]
            ended = [servers.sample(app.process.pid) for app in apps]
            cpu0_busy = servers.cpu_busy(APP_CPU) - cpu0_began
            redis_cost = None
            if counting is not None:
                await asyncio.sleep(1.0)  # the copy of the last frames in Redis
                frames = sum(len(s.ids) for s in samples)
                redis_cost = await counting.end(emulator.session, frames, len(samples))
        deltas = await emulator.deltas()
        ids = [s.conversation_id for s in samples if s.conversation_id]
        stored = await asyncio.to_thread(stored_replies, database_url, ids)
    finally:
        codes = [app.process.stop() for app in apps]
    result = summarize_resume(scenario, samples, deltas, stored, gap)
    warnings: Counter[str] = Counter()
    for app in apps:
        warnings.update(app.process.warnings())
    result.update(log_warnings(warnings))
    app_cpu = sum(e.cpu - b.cpu for b, e in zip(began, ended, strict=True))
    result.update(
        target=target,
        loop=loop,
        server_exit_code=max(code or 0 for code in codes),
        app_cpu_s=round(app_cpu, 2),
        wall_s=round(ended[0].at - began[0].at, 2),
    )
    if redis_cost is not None:
        result["redis"] = redis_cost
    if pin:
        result["other_cpu_on_app_core_s"] = round(max(cpu0_busy - app_cpu, 0.0), 2)
    return result


def summarize_resume(
    scenario: Scenario,
    samples: list[Resumed],
    deltas: list[dict[str, Any]],
    stored: dict[str, Any],
    gap: float,
) -> dict[str, Any]:
    by_thread, by_run = deltas_by(deltas, "thread_id"), deltas_by(deltas, "run_id")
    errors: Counter[str] = Counter()
    first_frame: list[float] = []
    headers: list[float] = []
    text_mismatch = 0
    for sample in samples:
        if not sample.ok:
            errors[(sample.error or "not ok")[:120]] += 1
        if sample.first_frame_at is not None:
            first_frame.append(sample.first_frame_at - sample.sent_at)
        if sample.headers_at is not None:
            headers.append(sample.headers_at - sample.sent_at)
        sent = by_thread.get(sample.thread_id or "", [])
        if not sent or "".join(d["text"] for d in sent) != sample.text:
            text_mismatch += 1
    ids = [s.conversation_id for s in samples]
    return {
        "scenario": scenario.name,
        "streams": len(samples),
        "ok": sum(s.ok for s in samples),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
        "text_mismatch": text_mismatch,
        "ids_out_of_order": sum(not s.ids_in_order for s in samples),
        "stored_mismatch": stored_mismatches(ids, stored, by_run),
        "frames_before_drop": scenario.resume_frames,
        "gap_ms": round(gap * 1000, 1),
        "reconnect_first_frame_ms": dist_ms(first_frame),
        "reconnect_headers_ms": dist_ms(headers),
        "replayed_frames_mean": round(
            sum(s.replayed for s in samples) / len(samples), 1
        )
        if samples
        else None,
    }


class RedisCounting:
    """What Redis did for the app between `begin` and `end`: the server's
    counters (INFO, every client's commands) and the app's own count (its
    servers' probes), per frame the clients received and per reply."""

    def __init__(self, bench_redis: BenchRedis | None, apps: list[Server]) -> None:
        assert bench_redis is not None
        self.redis = bench_redis
        self.apps = apps

    async def _app_counts(self, session: aiohttp.ClientSession) -> Counter[str]:
        """Commands, bytes and commands by name (`cmd:<name>`), every app."""
        total: Counter[str] = Counter()
        for app in self.apps:
            counts = await app.redis_counts(session)
            total.update(commands=counts["commands"], bytes=counts["bytes"])
            total.update({f"cmd:{n}": c for n, c in counts["by_command"].items()})
        return total

    async def begin(self, session: aiohttp.ClientSession) -> None:
        self.app_before = await self._app_counts(session)
        self.before = self.redis.counters()

    async def end(
        self, session: aiohttp.ClientSession, frames: int, replies: int
    ) -> dict[str, Any]:
        server = redis_stats.delta(self.before, self.redis.counters())
        after = await self._app_counts(session)
        after.subtract(self.app_before)
        app: dict[str, Any] = {"commands": after["commands"], "bytes": after["bytes"]}
        app["by_command"] = {
            key.removeprefix("cmd:"): count
            for key, count in after.most_common()
            if key.startswith("cmd:") and count
        }

        def per(value: int, count: int, digits: int = 2) -> float | None:
            return round(value / count, digits) if count else None

        return {
            "server": server,
            "app": app,
            "frames_received": frames,
            "replies": replies,
            "commands_per_frame": per(server["commands"], frames),
            "input_bytes_per_frame": per(server["input_bytes"], frames, 1),
            "output_bytes_per_frame": per(server["output_bytes"], frames, 1),
            "commands_per_reply": per(server["commands"], replies, 1),
            "input_kib_per_reply": per(server["input_bytes"] / 1024, replies),
            "app_commands_per_frame": per(app["commands"], frames),
            "app_commands_per_reply": per(app["commands"], replies, 1),
            "app_bytes_per_frame": per(app["bytes"], frames, 1),
            "others_commands": others_commands(server["by_command"], app["by_command"]),
        }


def log_warnings(found: Counter[str]) -> dict[str, Any]:
    """The server's warnings and errors (warm-up included), the commonest kinds."""
    return {
        "log_warnings": found.total(),
        "log_warning_kinds": dict(found.most_common(5)),
    }


def others_commands(server: dict[str, int], app: dict[str, int]) -> int:
    """Commands the Redis server ran beyond the app's own, by name: other clients
    of the same server (at least this many). Names compare without their
    subcommand; a command the server rejected (Redis 7.0 has no CLIENT SETINFO,
    which redis-py sends on connecting) is the app's alone."""
    ran: Counter[str] = Counter()
    for name, count in server.items():
        ran[name.split("|", 1)[0]] += count
    return sum(max(count - app.get(name, 0), 0) for name, count in ran.items())


def stored_replies(database_url: str, conversation_ids: list[str]) -> dict[str, Any]:
    """The assistant messages stored for these conversations, read with the ORM."""
    os.environ.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY=servers.SECRET_KEY,
        DJANGO_DEBUG="0",
        DATABASE_URL=database_url,
        LOG_LEVEL="WARNING",
    )
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db import connections

    from chat.models import Message

    rows = Message.objects.filter(
        conversation_id__in=conversation_ids, role=Message.Role.ASSISTANT
    ).values(
        "conversation_id",
        "content",
        "status",
        "upstream_run_id",
        "time_to_first_chunk_ms",
    )
    by_conversation: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_conversation[str(row["conversation_id"])].append(row)
    connections.close_all()
    return by_conversation


def summarize(
    scenario: Scenario,
    streams: list[Stream],
    deltas: list[dict[str, Any]],
    stored: dict[str, Any] | None,
    idle: Sample,
    began: Sample,
    ended: Sample,
    after: Sample,
    samples: list[tuple[Sample, int]],
    queue: list[tuple[float, int]],
) -> dict[str, Any]:
    by_thread, by_run = deltas_by(deltas, "thread_id"), deltas_by(deltas, "run_id")

    origin = min((s.started for s in streams), default=0.0)
    timeline: list[list[float | None]] = []
    relay: list[float] = []
    steady: list[float] = []
    # Steady state: every stream open (last one opened 2 s ago), none finished.
    steady_from = max((s.started for s in streams), default=0.0) + 2.0
    steady_to = min((s.ended_at or 0.0 for s in streams), default=0.0)
    ttfc_overhead: list[float] = []
    e2e_ttfc: list[float] = []
    headers: list[float] = []
    errors: Counter[str] = Counter()
    text_mismatch = 0
    frames = chunks = 0
    for stream in streams:
        if stream.headers_at is not None:
            headers.append(stream.headers_at - stream.started)
        frames += stream.frames
        chunks += len(stream.chunk_texts)
        if not stream.ok:
            errors[(stream.error or "not ok")[:120]] += 1
        sent = by_thread.get(stream.thread_id or "", [])
        timeline.append(
            [
                _ms(stream.started, origin),
                _ms(stream.headers_at, origin),
                _ms(sent[0]["monotonic"] if sent else None, origin),
                _ms(stream.first_chunk_at, origin),
                _ms(stream.ended_at, origin),
            ]
        )
        if "".join(d["text"] for d in sent) != stream.text or not sent:
            text_mismatch += 1
        if stream.first_chunk_at is None or not sent:
            continue
        e2e_ttfc.append(stream.first_chunk_at - stream.started)
        ttfc_overhead.append(stream.first_chunk_at - sent[0]["monotonic"])
        # Chunks may carry several deltas (the relay coalesces what queued up):
        # a delta arrived with the first chunk that reaches its end offset.
        ends, total = [], 0
        for text in stream.chunk_texts:
            total += len(text)
            ends.append(total)
        offset = 0
        for delta in sent:
            offset += len(delta["text"])
            at = bisect.bisect_left(ends, offset)
            if at < len(ends):
                latency = stream.chunk_times[at] - delta["monotonic"]
                relay.append(latency)
                if steady_from <= delta["monotonic"] <= steady_to:
                    steady.append(latency)

    stored_mismatch = None
    server_ttfc: list[float] = []
    if stored is not None:
        ids = [s.conversation_id for s in streams]
        stored_mismatch = stored_mismatches(ids, stored, by_run)
        for conversation_id in ids:
            rows = stored.get(conversation_id or "", [])
            if rows and rows[0]["time_to_first_chunk_ms"] is not None:
                server_ttfc.append(rows[0]["time_to_first_chunk_ms"] / 1000)

    cpu = ended.cpu - began.cpu
    peak = max(samples, key=lambda s: (s[1], s[0].at)) if samples else None
    open_streams = peak[1] if peak else 0
    rss_open = peak[0].rss if peak else None
    out: dict[str, Any] = {
        "scenario": scenario.name,
        "streams": len(streams),
        "ok": sum(s.ok for s in streams),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
        "text_mismatch": text_mismatch,
        "stored_mismatch": stored_mismatch,
        "deltas_sent": len(deltas),
        "chunks_received": chunks,
        "frames_received": frames,
        "relay_latency_ms": dist_ms(relay),
        "relay_latency_steady_ms": dist_ms(steady),
        "ttfc_overhead_ms": dist_ms(ttfc_overhead),
        "e2e_ttfc_ms": dist_ms(e2e_ttfc),
        "headers_ms": dist_ms(headers),
        "server_ttfc_ms": dist_ms(server_ttfc) if stored is not None else None,
        "wall_s": round(ended.at - began.at, 2),
        "app_cpu_s": round(cpu, 2),
        "app_cpu_util": round(cpu / max(ended.at - began.at, 1e-9), 3),
        "deltas_per_cpu_s": round(len(deltas) / cpu) if cpu > 0 else None,
        "chunks_per_cpu_s": round(chunks / cpu) if cpu > 0 else None,
        "cpu_ms_per_stream": round(cpu * 1000 / len(streams), 2) if streams else None,
        "rss_idle_mib": round(idle.rss / 2**20, 1),
        "rss_open_mib": round(rss_open / 2**20, 1) if rss_open else None,
        "rss_peak_mib": round(max(s.rss for s, _ in samples) / 2**20, 1)
        if samples
        else None,
        "rss_after_mib": round(after.rss / 2**20, 1),
        "open_streams_at_sample": open_streams,
        "kib_per_open_stream": round((rss_open - idle.rss) / 1024 / open_streams, 1)
        if rss_open and open_streams
        else None,
        "threads_idle": idle.threads,
        "threads_open": peak[0].threads if peak else None,
        "threads_peak": max(s.threads for s, _ in samples) if samples else None,
        "threads_after": after.threads,
        "fds_open": peak[0].fds if peak else None,
    }
    if queue:
        start = began.at
        waiting = [(t - start, depth) for t, depth in queue if t >= start]
        backlog = [(t, d) for t, d in waiting if d > 0]
        out["accept_queue"] = {
            "max_unaccepted": max((d for _, d in waiting), default=0),
            "last_unaccepted_at_s": round(backlog[-1][0], 3) if backlog else 0.0,
            "seconds_with_unaccepted": round(
                sum(1 for _ in backlog) * 0.01, 2
            ),  # approximate: one sample every 10 ms
        }
        out["streams_headers_over_1s"] = sum(h > 1.0 for h in headers)
    out["timeline_fields"] = ["start", "headers", "delta0_sent", "chunk0", "end"]
    out["timeline_ms"] = timeline
    return out


def deltas_by(
    deltas: list[dict[str, Any]], key: str
) -> dict[str, list[dict[str, Any]]]:
    """The emulator's deltas by thread or run, each group in order."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for delta in deltas:
        groups[delta[key]].append(delta)
    for group in groups.values():
        group.sort(key=lambda d: d["index"])
    return groups


def stored_mismatches(
    conversation_ids: list[str | None],
    stored: dict[str, Any],
    by_run: dict[str, list[dict[str, Any]]],
) -> int:
    """Conversations whose stored reply is missing, not complete, or not the text
    of the run it names."""
    mismatches = 0
    for conversation_id in conversation_ids:
        rows = stored.get(conversation_id or "", [])
        expected = (
            "".join(d["text"] for d in by_run.get(rows[0]["upstream_run_id"], []))
            if len(rows) == 1
            else None
        )
        if (
            len(rows) != 1
            or rows[0]["status"] != "complete"
            or rows[0]["content"] != expected
            or not expected
        ):
            mismatches += 1
    return mismatches


def _ms(at: float | None, origin: float) -> float | None:
    return None if at is None else round((at - origin) * 1000, 1)


# --- profiling --------------------------------------------------------------------


def profile_paths(target: str, scenario: Scenario) -> tuple[Path, Path]:
    stem = f"profile-{scenario.name}-{target}"
    return RESULTS / f"{stem}.txt", RESULTS / f"{stem}-top.txt"


def summarize_profile(target: str, scenario: Scenario) -> dict[str, Any]:
    raw, summary = profile_paths(target, scenario)
    if not raw.exists():
        return {"error": "py-spy wrote no profile (see bench/results/logs)"}
    data, text = pyspy.summarize(raw, f"{target}, scenario {scenario.name}")
    summary.write_text(text)
    data.update(raw=str(raw.relative_to(ROOT)), summary=str(summary.relative_to(ROOT)))
    return data


# --- report -----------------------------------------------------------------------

REDIS_ROWS = [
    ("redis.commands_per_frame", "Redis commands / frame (INFO)", "{:.2f}"),
    ("redis.input_bytes_per_frame", "Redis bytes in / frame (INFO)", "{:.0f}"),
    ("redis.output_bytes_per_frame", "Redis bytes out / frame (INFO)", "{:.0f}"),
    ("redis.commands_per_reply", "Redis commands / reply (INFO)", "{:.1f}"),
    ("redis.input_kib_per_reply", "Redis KiB in / reply (INFO)", "{:.2f}"),
    ("redis.app_commands_per_frame", "  app's own count: commands / frame", "{:.2f}"),
    ("redis.app_bytes_per_frame", "  app's own count: bytes / frame", "{:.0f}"),
    ("redis.others_commands", "Redis commands by other clients", "{:,}"),
]
ROWS = [
    ("errors", "errors", "{}"),
    ("log_warnings", "server log warnings and errors", "{:,}"),
    ("text_mismatch", "client text != emulator", "{}"),
    ("stored_mismatch", "stored reply != emulator", "{}"),
    ("ttfc_overhead_ms.p50", "TTFC overhead p50 ms", "{:.2f}"),
    ("ttfc_overhead_ms.p90", "TTFC overhead p90 ms", "{:.2f}"),
    ("ttfc_overhead_ms.p99", "TTFC overhead p99 ms", "{:.2f}"),
    ("ttfc_overhead_ms.max", "TTFC overhead max ms", "{:.2f}"),
    ("relay_latency_ms.p50", "relay latency p50 ms", "{:.2f}"),
    ("relay_latency_ms.p99", "relay latency p99 ms", "{:.2f}"),
    ("relay_latency_ms.max", "relay latency max ms", "{:.2f}"),
    ("relay_latency_steady_ms.p50", "  all open (steady): p50 ms", "{:.2f}"),
    ("relay_latency_steady_ms.p99", "  all open (steady): p99 ms", "{:.2f}"),
    ("e2e_ttfc_ms.p50", "end-to-end TTFC p50 ms", "{:.2f}"),
    ("e2e_ttfc_ms.p99", "end-to-end TTFC p99 ms", "{:.2f}"),
    ("headers_ms.p50", "response headers p50 ms", "{:.2f}"),
    ("server_ttfc_ms.p50", "server-side TTFC p50 ms (stored)", "{:.2f}"),
    ("deltas_per_cpu_s", "deltas relayed / CPU-s", "{:,}"),
    ("chunks_per_cpu_s", "chunk frames sent / CPU-s", "{:,}"),
    ("cpu_ms_per_stream", "CPU ms per stream", "{:.2f}"),
    ("app_cpu_util", "app CPU utilisation", "{:.2f}"),
    ("rss_idle_mib", "RSS idle MiB", "{:.1f}"),
    ("rss_open_mib", "RSS with streams open MiB", "{:.1f}"),
    ("rss_after_mib", "RSS after MiB", "{:.1f}"),
    ("open_streams_at_sample", "streams open at that sample", "{}"),
    ("kib_per_open_stream", "KiB RSS per open stream", "{:.1f}"),
    ("threads_idle", "OS threads idle", "{}"),
    ("threads_open", "OS threads with streams open", "{}"),
    ("threads_after", "OS threads after", "{}"),
    ("gc.gen2.collections", "full GC collections", "{}"),
    ("gc.gen2.max_ms", "longest full GC pause ms", "{:.1f}"),
    ("gc.gen0.total_ms", "GC gen0 total ms", "{:.1f}"),
    *REDIS_ROWS,
    ("other_cpu_on_app_core_s", "other processes' CPU-s on app core", "{:.2f}"),
]
RESUME_ROWS = [
    ("errors", "errors", "{}"),
    ("log_warnings", "server log warnings and errors", "{:,}"),
    ("text_mismatch", "client text != emulator", "{}"),
    ("ids_out_of_order", "frame ids repeated or out of order", "{}"),
    ("stored_mismatch", "stored reply != emulator", "{}"),
    (
        "reconnect_first_frame_ms.p50",
        "reconnect -> first replayed frame p50 ms",
        "{:.2f}",
    ),
    (
        "reconnect_first_frame_ms.p90",
        "reconnect -> first replayed frame p90 ms",
        "{:.2f}",
    ),
    (
        "reconnect_first_frame_ms.p99",
        "reconnect -> first replayed frame p99 ms",
        "{:.2f}",
    ),
    (
        "reconnect_first_frame_ms.max",
        "reconnect -> first replayed frame max ms",
        "{:.2f}",
    ),
    ("reconnect_headers_ms.p50", "reconnect -> response headers p50 ms", "{:.2f}"),
    ("replayed_frames_mean", "frames per resumed response (mean)", "{:.1f}"),
    ("app_cpu_s", "app CPU-s (every server)", "{:.2f}"),
    *REDIS_ROWS,
    ("other_cpu_on_app_core_s", "other processes' CPU-s on app core", "{:.2f}"),
]


def get(result: dict[str, Any] | None, path: str) -> Any:
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def fmt(value: Any, pattern: str) -> str:
    if value is None:
        return "-"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def ratio(ours: Any, reference: Any) -> str:
    if not isinstance(ours, int | float) or not isinstance(reference, int | float):
        return ""
    if reference == 0:
        return "" if ours == 0 else "inf"
    return f"{ours / reference:.2f}x"


Cells = tuple[list[str], list[list[str]]]  # header, rows


def cells(scenario: Scenario, results: list[dict[str, Any]]) -> Cells:
    """The scenario's table: a column per target, then one ratio to the
    reference per other target."""
    if scenario.name == "burst":
        return burst_cells(results)
    by_target = {r["target"]: r for r in results}
    ref = by_target.get(REFERENCE)
    order = (OURS, REDIS, REPLICA, EXPERIMENT, REFERENCE)
    columns = [t for t in order if t in by_target]
    others = [t for t in columns if t != REFERENCE] if ref is not None else []
    head = ["", *columns, *(t.replace("chatsite", "ratio") for t in others)]
    rows = []
    for path, label, pattern in RESUME_ROWS if scenario.resume_frames else ROWS:
        values = [get(by_target[t], path) for t in columns]
        if all(v is None for v in values):
            continue
        b = get(ref, path)
        ratios = [ratio(get(by_target[t], path), b) for t in others]
        rows.append([label, *(fmt(v, pattern) for v in values), *ratios])
    return head, rows


def burst_cells(results: list[dict[str, Any]]) -> Cells:
    head = ["loop", "run", "errors", "max unaccepted", "last unaccepted s"]
    head += ["headers > 1 s", "headers p99 ms", "TTFC p99 ms", "TTFC max ms"]
    rows = []
    for r in results:
        queue = r.get("accept_queue") or {}
        rows.append(
            [
                r["loop"],
                str(r["run"]),
                str(r["errors"]),
                str(queue.get("max_unaccepted", "-")),
                str(queue.get("last_unaccepted_at_s", "-")),
                str(r.get("streams_headers_over_1s", "-")),
                fmt(get(r, "headers_ms.p99"), "{:.0f}"),
                fmt(get(r, "e2e_ttfc_ms.p99"), "{:.0f}"),
                fmt(get(r, "e2e_ttfc_ms.max"), "{:.0f}"),
            ]
        )
    return head, rows


def notes_under(results: list[dict[str, Any]]) -> list[str]:
    """The lines under a table: the commonest server warning and Redis commands
    by name, per target."""
    lines = []
    for r in results:
        for kind, count in list((r.get("log_warning_kinds") or {}).items())[:1]:
            lines.append(f"Server log, {r['target']}: {count:,} x {kind}")
    for r in results:
        for source, path in (("INFO", "server"), ("app's own count", "app")):
            by_command = get(r, f"redis.{path}.by_command")
            if by_command:
                top = ", ".join(f"{n} {c:,}" for n, c in list(by_command.items())[:9])
                lines.append(f"Redis commands ({source}), {r['target']}: {top}")
    return lines


def text_table(scenario: Scenario, results: list[dict[str, Any]]) -> str:
    head, rows = cells(scenario, results)
    widths = [max(len(row[i]) for row in (head, *rows)) for i in range(len(head))]

    def line(row: list[str]) -> str:
        cells = [f"{c:>{w}}" for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([f"{row[0]:<{widths[0]}}", *cells])

    out = [f"== {scenario.name}: {scenario.title}", line(head), *map(line, rows)]
    return "\n".join(out + notes_under(results))


def markdown_table(scenario: Scenario, results: list[dict[str, Any]]) -> str:
    head, rows = cells(scenario, results)
    align = ["---"] + ["---:"] * (len(head) - 1)
    out = [f"### {scenario.name}: {scenario.title}", ""]
    out += ["| " + " | ".join(row) + " |" for row in (head, align, *rows)]
    notes = notes_under(results)
    return "\n".join(out + (["", *notes] if notes else []))


# The groups of targets, as the issues set them.
PLAIN_TARGETS = "chatsite as it is"
REDIS_TARGETS = "with Redis on (chatsite+redis, issue 14)"
ROUND_2_TARGETS = "performance round 2 (issue 15), ratios to the reference"
GROUPS = (PLAIN_TARGETS, REDIS_TARGETS, ROUND_2_TARGETS)
# The scenarios whose deltas and CPU are pooled for deltas per CPU-second.
POOLED_SCENARIOS = ("single", "c100", "c500", "hold1000", "hold1000-50ms", "fast")
# The event loop the image and `make run` serve with (uvicorn's --loop).
SHIPPED_LOOP = servers.SHIPPED_LOOP
# Issue 14: with the reply log in Redis, RSS per open stream at these scenarios.
REDIS_RSS_SCENARIOS = ("c100", "c500", "hold1000", "hold1000-50ms")


def check_targets(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    def pick(name: str, target: str = OURS) -> dict[str, Any] | None:
        return next((r for r in results.get(name, []) if r["target"] == target), None)

    checks: list[dict[str, Any]] = []

    def check(
        label: str,
        value: Any,
        limit: float,
        *,
        at_least: bool = False,
        group: str = PLAIN_TARGETS,
    ):
        if value is None:
            return
        met = value >= limit if at_least else value <= limit
        checks.append({"group": group, "target": label, "measured": value, "met": met})

    single, c100, c500 = pick("single"), pick("c100"), pick("c500")
    hold, fast = pick("hold1000"), pick("fast")
    check("relay p50 <= 2 ms at 1 stream", get(single, "relay_latency_ms.p50"), 2)
    check("relay p99 <= 10 ms at 1 stream", get(single, "relay_latency_ms.p99"), 10)
    check("relay p99 <= 50 ms at 500 streams", get(c500, "relay_latency_ms.p99"), 50)
    for scenario, mine in (("single", single), ("c100", c100)):
        ref = pick(scenario, REFERENCE)
        name = "1 stream" if mine is single else f"{get(mine, 'streams')} streams"
        for p in ("p50", "p99"):
            a, b = get(mine, f"e2e_ttfc_ms.{p}"), get(ref, f"e2e_ttfc_ms.{p}")
            if a is not None and b:
                check(f"e2e TTFC {p} <= 1.0x reference at {name}", round(a / b, 2), 1)
    if hold is not None:
        check("1,000 streams: 0 errors", hold["errors"], 0)
        check("1,000 streams: stored replies all match", hold["stored_mismatch"], 0)
        check(
            "1,000 streams: relay p99 <= 100 ms", get(hold, "relay_latency_ms.p99"), 100
        )
        check(
            "1,000 streams: relay p99 <= 100 ms, all open (steady)",
            get(hold, "relay_latency_steady_ms.p99"),
            100,
        )
        check(
            "1,000 streams: <= 64 KiB RSS per stream", hold["kib_per_open_stream"], 64
        )
        check("1,000 streams: <= 32 KiB (stretch)", hold["kib_per_open_stream"], 32)
        check("1,000 streams: <= 32 OS threads", hold["threads_peak"], 32)
    ref_fast = pick("fast", REFERENCE)
    if fast and ref_fast and fast["deltas_per_cpu_s"] and ref_fast["deltas_per_cpu_s"]:
        value = round(fast["deltas_per_cpu_s"] / ref_fast["deltas_per_cpu_s"], 2)
        check("deltas per CPU-second >= 1.0x reference", value, 1.0, at_least=True)

    def redis_check(label: str, value: Any, limit: float, *, at_least: bool = False):
        check(label, value, limit, at_least=at_least, group=REDIS_TARGETS)

    redis_check(
        "relay p99 <= 10 ms at 1 stream",
        get(pick("single", REDIS), "relay_latency_ms.p99"),
        10,
    )
    mine, ref = (
        get(pick("fast", REDIS), "deltas_per_cpu_s"),
        get(ref_fast, "deltas_per_cpu_s"),
    )
    if mine and ref:
        value = round(mine / ref, 2)
        redis_check(
            "deltas per CPU-second >= 2.0x reference", value, 2.0, at_least=True
        )
    for name in REDIS_RSS_SCENARIOS:
        found = pick(name, REDIS)
        if found is not None:
            redis_check(
                f"<= 96 KiB RSS per open stream ({name}, {found['streams']} streams)",
                found["kib_per_open_stream"],
                96,
            )
    round_2_checks(results, pick, functools.partial(check, group=ROUND_2_TARGETS))
    return checks


def round_2_checks(
    results: dict[str, list[dict[str, Any]]],
    pick: Callable[[str, str], dict[str, Any] | None],
    check: Callable[..., None],
) -> None:
    """Issue 15's targets, through `check_targets`' `pick` and `check`; ratios are
    to the reference relay of the same run."""
    for target in (OURS, REDIS):
        for scenario in ("single", "c100"):
            mine, ref = pick(scenario, target), pick(scenario, REFERENCE)
            if mine is None or ref is None:
                continue
            where = "1 stream" if scenario == "single" else f"{mine['streams']} streams"
            for p, limit in (("p50", 0.8), ("p99", 1.0)):
                a, b = get(mine, f"e2e_ttfc_ms.{p}"), get(ref, f"e2e_ttfc_ms.{p}")
                if a is not None and b:
                    check(
                        f"{target}: e2e TTFC {p} <= {limit}x at {where}",
                        round(a / b, 2),
                        limit,
                    )
        c500 = pick("c500", target)
        check(
            f"{target}: relay p99 <= 50 ms at 500 streams",
            get(c500, "relay_latency_ms.p99"),
            50,
        )
        for name in REDIS_RSS_SCENARIOS:
            found = pick(name, target)
            if found is not None:
                check(
                    f"{target}: <= 64 KiB RSS per open stream "
                    f"({name}, {found['streams']} streams)",
                    found["kib_per_open_stream"],
                    64,
                )
        pooled = [
            (pick(name, target), pick(name, REFERENCE)) for name in POOLED_SCENARIOS
        ]
        pooled = [(a, b) for a, b in pooled if a and b and a["app_cpu_s"]]
        if pooled:
            mine = sum(a["deltas_sent"] for a, _ in pooled) / sum(
                a["app_cpu_s"] for a, _ in pooled
            )
            ref = sum(b["deltas_sent"] for _, b in pooled) / sum(
                b["app_cpu_s"] for _, b in pooled
            )
            names = ", ".join(a["scenario"] for a, _ in pooled)
            check(
                f"{target}: deltas per CPU-second >= 2.5x, pooled ({names})",
                round(mine / ref, 2),
                2.5,
                at_least=True,
            )
    bursts = [
        r for r in results.get("burst", []) if r["target"] == OURS and r.get("loop")
    ]
    for loop in sorted({r["loop"] for r in bursts}):
        runs = [r for r in bursts if r["loop"] == loop]
        last = max(get(r, "accept_queue.last_unaccepted_at_s") or 0.0 for r in runs)
        shipped = " (shipped)" if loop == SHIPPED_LOOP else ""
        check(
            f"{loop}{shipped}: {runs[0]['streams']:,} connects at once, none "
            f"un-accepted after 1 s, worst of {len(runs)} runs (s)",
            last,
            1.0,
        )


# --- main -------------------------------------------------------------------------


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_LIMIT if hard == resource.RLIM_INFINITY else min(FD_LIMIT, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def environment(pin: bool, database: servers.Database, fd_limit: int) -> dict:
    def version(package: str) -> str | None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as v

        try:
            return v(package)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "pinned": (
            f"server on CPU {APP_CPU}; client, emulator, py-spy on CPU {LOAD_CPU}"
            if pin
            else "not pinned"
        ),
        "database": database.label,
        "fd_limit": fd_limit,
        "load_average_at_start": os.getloadavg(),
        "packages": {
            p: version(p)
            for p in (
                "django",
                "uvicorn",
                "uvloop",
                "httptools",
                "aiohttp",
                "azure-ai-agents",
                "azure-core",
                "fastapi",
                "starlette",
                "psycopg",
            )
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pin = servers.can_pin() and not args.no_pin
    if pin:
        os.sched_setaffinity(0, {LOAD_CPU})
    if args.nice:
        # Inherited by every process started below (emulator, servers, py-spy).
        os.nice(args.nice)
    fd_limit = raise_fd_limit()
    (RESULTS / "logs").mkdir(parents=True, exist_ok=True)
    catalogue = {**SCENARIOS, **QUICK} if args.quick else SCENARIOS
    names = args.scenario or (QUICK_DEFAULT if args.quick else DEFAULT)
    scenarios = [catalogue[name] for name in names]
    targets = args.targets.split(",")
    bench_redis: BenchRedis | None = None
    redis_note = ""
    if REDIS in targets:
        bench_redis = BenchRedis(args.redis_url)
        why = bench_redis.unavailable()
        if why is not None:
            redis_note = f"{REDIS} skipped: Redis at {args.redis_url}: {why}"
            print(redis_note, flush=True)
            bench_redis.close()
            bench_redis = None
            targets.remove(REDIS)

    print("preparing the database ...", flush=True)
    database = servers.prepare_database(os.environ.get("DATABASE_URL", ""))
    emulator_process, base = servers.start_emulator(
        RESULTS / "logs", LOAD_CPU if pin else None
    )
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "quick": args.quick,
        "environment": environment(pin, database, fd_limit)
        | {"nice": os.nice(0), "redis": args.redis_url if bench_redis else None},
        "notes": [
            "The reference relay stores nothing (the old service had no database); "
            "chatsite writes each turn to the database (start_turn; in a new "
            "conversation while its upstream call is on its way and its reply "
            "is produced; record_run when the run starts, finish_turn at the end).",
            "Both relays make their upstream calls to the same emulator: chatsite "
            "one per reply (a new conversation: POST /threads/runs, streaming; a "
            "follow-up: runs.stream with the message), the reference three "
            "(threads.create, messages.create, runs.stream).",
            "Chat rate limits are off (CHAT_RATE_LIMIT_PER_MINUTE=0, "
            "CHAT_MAX_CONCURRENT_STREAMS=0): every stream comes from one address.",
            f"{REDIS} is chatsite with REDIS_URL={args.redis_url}: every frame is "
            "also copied to a Redis Stream, and the cache (leases, stream slots) is "
            "Redis. Redis (INFO) figures are the whole server's: other clients of "
            "the same server count too; 'app's own count' is what chatsite sent.",
        ]
        + ([redis_note] if redis_note else []),
        "scenarios": {},
    }
    try:
        async with aiohttp.ClientSession() as control:
            emulator = Emulator(base, control)
            for scenario in scenarios:
                results: list[dict[str, Any]] = []
                for loop in scenario.loops:
                    for target in scenario.targets:
                        if (REDIS if target == REPLICA else target) not in targets:
                            continue
                        served_by = loop
                        if scenario.name != "burst":
                            served_by = loop_of(target, args.loop)
                        if scenario.resume_frames:
                            print(f"-- {scenario.name}: {target}", flush=True)
                            result = await measure_resume(
                                scenario,
                                target,
                                emulator,
                                database.url,
                                pin,
                                bench_redis,
                            )
                            results.append(result)
                            first = get(result, "reconnect_first_frame_ms.p50")
                            print(
                                f"   {result['ok']}/{result['streams']} ok, "
                                f"reconnect to first frame p50 {first} ms",
                                flush=True,
                            )
                            continue
                        runs = scenario.rounds if scenario.name == "burst" else 1
                        one = replace(scenario, rounds=1) if runs > 1 else scenario
                        for n in range(runs):
                            print(
                                f"-- {scenario.name}: {target} ({served_by})",
                                flush=True,
                            )
                            result = await measure(
                                one,
                                target,
                                served_by,
                                emulator,
                                database.url,
                                pin,
                                experiments=args.experiments,
                                bench_redis=bench_redis,
                            )
                            result["run"] = n + 1
                            results.append(result)
                            print(
                                f"   {result['ok']}/{result['streams']} ok, "
                                f"relay p99 {get(result, 'relay_latency_ms.p99')} ms,"
                                f" {result['wall_s']} s",
                                flush=True,
                            )
                if args.profile and (args.scenario or scenario.name in PROFILED):
                    for target in scenario.targets:
                        if target in targets:
                            print(f"-- {scenario.name}, profiled: {target}", flush=True)
                            profiled = await measure(
                                scenario,
                                target,
                                loop_of(target, args.loop),
                                emulator,
                                database.url,
                                pin,
                                profile=True,
                                experiments=args.experiments,
                                bench_redis=bench_redis,
                            )
                            profiles = report.setdefault("profiles", {})
                            profiles[f"{scenario.name}-{target}"] = profiled["profile"]
                report["scenarios"][scenario.name] = {
                    "scenario": asdict(scenario),
                    "results": results,
                }
                print(text_table(scenario, results), flush=True)
    finally:
        emulator_process.stop()
        database.close()
        if bench_redis is not None:
            bench_redis.flush()
            bench_redis.close()
    report["targets"] = check_targets(
        {name: s["results"] for name, s in report["scenarios"].items()}
    )
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    return report


def print_targets(report: dict[str, Any]) -> None:
    for group in GROUPS:
        checks = [c for c in report["targets"] if c["group"] == group]
        if checks:
            print(f"\n== targets, {group}")
        for check in checks:
            mark = "met   " if check["met"] else "MISSED"
            print(f"  {mark} {check['target']}: {check['measured']}")
    for note in report["notes"]:
        print(f"note: {note}")


# The summary's rows: scenarios ("*": each that ran), figure, paths, format.
RELAY = ("relay_latency_ms.p50", "relay_latency_ms.p99")
E2E = ("e2e_ttfc_ms.p50", "e2e_ttfc_ms.p99")
SUMMARY_ROWS: list[tuple[tuple[str, ...], str, tuple[str, ...], str]] = [
    (
        ("single",),
        "relay latency p50 / p99 ms",
        RELAY,
        "{:.2f}",
    ),
    (
        ("single", "c100"),
        "end-to-end TTFC p50 / p99 ms",
        E2E,
        "{:.1f}",
    ),
    (
        ("c500",),
        "relay latency p50 / p99 ms",
        RELAY,
        "{:.0f}",
    ),
    (
        ("hold1000",),
        "relay latency p99 ms / all open",
        (RELAY[1], "relay_latency_steady_ms.p99"),
        "{:.0f}",
    ),
    (("fast",), "deltas relayed / CPU-s", ("deltas_per_cpu_s",), "{:,}"),
    (
        REDIS_RSS_SCENARIOS,
        "KiB RSS per open stream",
        ("kib_per_open_stream",),
        "{:.1f}",
    ),
    (("*",), "errors / server log warnings", ("errors", "log_warnings"), "{:,}"),
    (
        ("*",),
        "Redis commands / frame, INFO / app's own",
        ("redis.commands_per_frame", "redis.app_commands_per_frame"),
        "{:.2f}",
    ),
    (
        ("*",),
        "Redis bytes in / frame, INFO / app's own",
        ("redis.input_bytes_per_frame", "redis.app_bytes_per_frame"),
        "{:.0f}",
    ),
    (("*",), "others' CPU-s on the app's core", ("other_cpu_on_app_core_s",), "{:.1f}"),
]
# Counts and noise: a ratio of them says nothing.
NO_RATIO = {"errors / server log warnings", "others' CPU-s on the app's core"}
RESUME_SUMMARY_ROWS: list[tuple[str, tuple[str, ...], str]] = [
    (
        "reconnect → first replayed frame p50 / p99 ms",
        ("reconnect_first_frame_ms.p50", "reconnect_first_frame_ms.p99"),
        "{:.1f}",
    ),
    (
        "errors / text lost or repeated / stored ≠ sent",
        ("errors", "text_mismatch", "stored_mismatch"),
        "{}",
    ),
    (
        "Redis commands / frame, INFO / app's own",
        ("redis.commands_per_frame", "redis.app_commands_per_frame"),
        "{:.2f}",
    ),
    (
        "Redis commands / resumed reply, INFO / app's own",
        ("redis.commands_per_reply", "redis.app_commands_per_reply"),
        "{:.1f}",
    ),
    ("others' CPU-s on the app's core", ("other_cpu_on_app_core_s",), "{:.1f}"),
]


def summary(report: dict[str, Any]) -> str:
    """Issue 14's figures in two small tables: each scenario with Redis on beside
    chatsite and the reference, then the reconnects."""
    scenarios = report["scenarios"]

    def shown(result: dict[str, Any] | None, paths: tuple[str, ...], pattern: str):
        values = [get(result, path) for path in paths]
        if all(v is None for v in values):
            return "-", values
        return " / ".join(fmt(v, pattern) for v in values), values

    head = ("scenario", "figure", OURS, REDIS, REFERENCE, "+redis / reference")
    out = [" | ".join(head), "---|---|---:|---:|---:|---:"]
    for name in (n for n in DEFAULT if n in scenarios and n not in ("resume", "burst")):
        by_target = {r["target"]: r for r in scenarios[name]["results"]}
        first = True
        for wanted, label, paths, pattern in SUMMARY_ROWS:
            if name not in wanted and wanted != ("*",):
                continue
            texts, values = zip(
                *(shown(by_target.get(t), paths, pattern) for t in head[2:5]),
                strict=True,
            )
            if not any(v for vs in values for v in vs):
                continue  # nothing but zeros and blanks
            ratios = [ratio(a, b) for a, b in zip(values[1], values[2], strict=True)]
            both = " / ".join(ratios) if label not in NO_RATIO and any(ratios) else ""
            out.append(" | ".join([name if first else "", label, *texts, both]))
            first = False
    if "resume" in scenarios:
        by_target = {r["target"]: r for r in scenarios["resume"]["results"]}
        columns = (OURS, REDIS, REPLICA)
        out += ["", " | ".join(("reconnect (resume)", *columns))]
        out.append("---|---:|---:|---:")
        for label, paths, pattern in RESUME_SUMMARY_ROWS:
            texts = [shown(by_target.get(t), paths, pattern)[0] for t in columns]
            out.append(" | ".join([label, *texts]))
    lines = (
        f"|{line}|" if line.startswith("---") else f"| {line} |" if line else ""
        for line in out
    )
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """Every table of the run, and the targets, as Markdown."""
    out = [f"Command: `{report['command']}`, {report['started']}", ""]
    out += ["### Summary", "", summary(report), ""]
    for name, scenario in report["scenarios"].items():
        catalogue = {**SCENARIOS, **QUICK} if report["quick"] else SCENARIOS
        out += [markdown_table(catalogue[name], scenario["results"]), ""]
    for group in GROUPS:
        checks = [c for c in report["targets"] if c["group"] == group]
        if checks:
            out += [f"### Targets, {group}", ""]
        for check in checks:
            mark = "met" if check["met"] else "**missed**"
            out.append(f"- {mark}: {check['target']} — {check['measured']}")
        if checks:
            out.append("")
    return "\n".join(out)


def without_timelines(report: dict[str, Any]) -> dict[str, Any]:
    trimmed = json.loads(json.dumps(report))
    for scenario in trimmed["scenarios"].values():
        for result in scenario["results"]:
            result.pop("timeline_ms", None)
            result.pop("timeline_fields", None)
    return trimmed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable); default: all but a quick run",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small scenarios, under a minute"
    )
    parser.add_argument(
        "--targets",
        default=f"{OURS},{REDIS},{REFERENCE}",
        help="comma-separated: chatsite, chatsite+redis (with REDIS_URL), "
        "reference, chatsite+exp (chatsite with bench/experiments.py applied)",
    )
    parser.add_argument(
        "--experiments",
        default="gc",
        help="what chatsite+exp applies (bench/experiments.py)",
    )
    parser.add_argument(
        "--loop",
        choices=sorted(servers.UVICORN_LOOPS),
        default=servers.SHIPPED_LOOP,
        help="the event loop of chatsite's servers in every scenario but burst "
        "(the reference keeps uvloop, as the old service ran)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="rerun the scenarios named with --scenario (by default fast and c100) "
        "under py-spy (results/profile-*)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", redis_stats.DEFAULT_URL),
        help=f"the Redis database {REDIS} uses (emptied before each server and "
        "after the run; default $BENCH_REDIS_URL or %(default)s)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for the run (e.g. -5 on a shared machine: other "
        "processes on the server's core otherwise show up as relay latency)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="write the JSON (without timelines) here, not to bench/latest.json",
    )
    args = parser.parse_args()

    started = time.monotonic()
    report = uvloop.run(run(args))
    report["duration_s"] = round(time.monotonic() - started, 1)
    print_targets(report)
    text = json.dumps(report, indent=2) + "\n"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    outputs = [RESULTS / f"run-{stamp}.json", RESULTS / "latest.json"]
    for path in outputs:
        path.write_text(text)
    outputs.append(RESULTS / "latest.md")
    (RESULTS / "latest.md").write_text(markdown(report))
    # The copy meant for the repository leaves out the per-stream timelines.
    summary = json.dumps(without_timelines(report), indent=2) + "\n"
    if not args.quick and not args.scenario and not args.output:
        outputs.append(BENCH / "latest.json")
        (BENCH / "latest.json").write_text(summary)
    if args.output:
        outputs.append(args.output)
        args.output.write_text(summary)
    print(f"\nwrote {', '.join(str(p) for p in outputs)}")
    print(f"took {report['duration_s']} s")


if __name__ == "__main__":
    main()
