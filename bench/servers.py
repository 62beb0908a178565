"""The processes a benchmark run starts, and what /proc says about them."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

APP_CPU = 0  # the server under test
LOAD_CPU = 1  # the harness (client), the emulator and py-spy

BENCH_DATABASE = "bench_chatsite"
# Ids in log messages, so that one kind of warning counts as one.
LOGGED_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SECRET_KEY = "bench-secret-key-not-for-production-0123456789abcdefghijklmnop"


def can_pin() -> bool:
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False
    return {APP_CPU, LOAD_CPU} <= cpus


def pinner(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process: CPU seconds used so far, RSS, threads, fds."""

    at: float
    cpu: float
    rss: int
    threads: int
    fds: int


def sample(pid: int) -> Sample:
    with open(f"/proc/{pid}/stat", "rb") as f:
        # Fields after the command name, which may contain spaces and parens.
        fields = f.read().rsplit(b")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    rss = int(fields[21]) * PAGE_SIZE
    threads = int(fields[17])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return Sample(time.monotonic(), cpu, rss, threads, fds)


def cpu_busy(cpu: int) -> float:
    """Seconds CPU `cpu` has spent not idle since boot, by every process."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(v) for v in line.split()[1:]]
                idle = ticks[3] + ticks[4]  # idle, iowait
                return (sum(ticks[:8]) - idle) / CLK_TCK
    return 0.0


def listen_queue(port: int) -> int | None:
    """Connections waiting in the kernel's accept queue of 127.0.0.1:port: the
    ones the server has not accepted yet (rx_queue of the LISTEN socket)."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            if parts[1] == local and parts[3] == "0A":
                return int(parts[4].split(":")[1], 16)
    return None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process with its output in a log file; stopped with SIGTERM."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cpu: int | None,
        log_dir: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=pinner(cpu),
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def warnings(self) -> Counter[str]:
        """Warnings and errors in the log so far, by logger and message: the
        app's JSON lines, uvicorn's plain `WARNING:`/`ERROR:` lines."""
        found: Counter[str] = Counter()
        with contextlib.suppress(OSError), open(self.log_path) as log:
            for line in log:
                if line.startswith("{"):
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
                        message = f"{entry.get('logger')}: {entry.get('message')}"
                        if entry.get("exc_info"):  # and the exception, last line
                            message += f" ({entry['exc_info'].splitlines()[-1]})"
                        found[LOGGED_ID.sub("<id>", message)[:240]] += 1
                elif line.startswith(("WARNING:", "ERROR:", "CRITICAL:")):
                    found[LOGGED_ID.sub("<id>", line.strip())[:160]] += 1
        return found

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""


def wait_http(url: str, process: Process, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            raise RuntimeError(f"{process.name} exited:\n{process.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not answer {url} in {timeout:g} s")


def start_emulator(log_dir: Path, cpu: int | None) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        "emulator",
        [PYTHON, str(BENCH / "emulator.py"), "--port", str(port)],
        env=dict(os.environ),
        cpu=cpu,
        log_dir=log_dir,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/_emulator/health", process)
    return process, base


async def configure_emulator(
    base: str,
    tokens: int,
    interval: float,
    session: aiohttp.ClientSession | None = None,
) -> None:
    """Empties the emulator and sets its replies: `tokens` tokens `interval`
    seconds apart, the first at once (through `session`, or one of its own)."""
    config = {"tokens": tokens, "token_interval": interval, "first_token_delay": 0}
    async with contextlib.AsyncExitStack() as stack:
        if session is None:
            session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.post(f"{base}/_emulator/reset") as response:
            response.raise_for_status()
        async with session.post(f"{base}/_emulator/config", json=config) as response:
            response.raise_for_status()


# The event loops a server may run on, by the name the results give them, as
# uvicorn's --loop takes them: chatsite's own (the image's and `make run`'s: uvloop
# accepting every waiting connection, chatsite/serving.py), uvloop as it is, and
# asyncio's.
UVICORN_LOOPS = {
    "accepting": "chatsite.serving:new_event_loop",
    "uvloop": "uvloop",
    "asyncio": "asyncio",
}
SHIPPED_LOOP = "accepting"
# The reference relay runs as the old service ran.
REFERENCE_LOOP = "uvloop"


# The HTTP protocol chatsite's servers run (the image's), and the reference relay's.
SHIPPED_HTTP = "chatsite.serving:HttpToolsProtocol"
REFERENCE_HTTP = "httptools"


def uvicorn_argv(
    app: str,
    port: int,
    *,
    loop: str,
    app_dir: Path | None,
    http: str = SHIPPED_HTTP,
) -> list[str]:
    argv = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--loop", UVICORN_LOOPS[loop], "--http", http, "--no-access-log"]
    argv += ["--backlog", "4096", "--timeout-graceful-shutdown", "15"]
    argv += ["--log-level", "warning"]
    if app_dir is not None:
        argv += ["--app-dir", str(app_dir)]
    return argv


def app_env(
    emulator_endpoint: str, database_url: str, redis_url: str | None = None
) -> dict[str, str]:
    """The app's environment; `redis_url` replaces the caller's REDIS_URL ("":
    none) unless it is None."""
    env = dict(os.environ)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(
        CHAT_BACKEND="azure_agents",
        AZURE_AI_PROJECT_ENDPOINT=emulator_endpoint,
        AZURE_AI_AGENT_ID="asst_emulator",
        AZURE_AI_CREDENTIAL="dev",
        CHAT_UPSTREAM_RETRIES="0",
        # Every benchmark stream comes from 127.0.0.1, one anonymous caller.
        CHAT_RATE_LIMIT_PER_MINUTE="0",
        CHAT_MAX_CONCURRENT_STREAMS="0",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=SECRET_KEY,
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        DATABASE_URL=database_url,
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="chatsite.settings",
    )
    return env


def reference_env(emulator_endpoint: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(REF_ENDPOINT=emulator_endpoint, REF_AGENT_ID="asst_emulator")
    return env


@dataclass
class Database:
    url: str
    label: str
    tempdir: tempfile.TemporaryDirectory[str] | None = None

    def close(self) -> None:
        if self.tempdir is not None:
            self.tempdir.cleanup()


def prepare_database(source_url: str, name: str = BENCH_DATABASE) -> Database:
    """A fresh, migrated database: `name` on the PostgreSQL server of `source_url`
    when it is one, SQLite in a temporary directory otherwise."""
    if source_url.startswith(("postgres://", "postgresql://")):
        import psycopg

        parts = urlsplit(source_url)
        admin = urlunsplit(parts._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {name}")
        url = urlunsplit(parts._replace(path=f"/{name}"))
        host = parts.hostname or "localhost"
        database = Database(url, f"PostgreSQL {name} on {host}")
    else:
        tempdir = tempfile.TemporaryDirectory(prefix="chatsite-bench-")
        url = f"sqlite:///{tempdir.name}/db.sqlite3"
        database = Database(url, "SQLite (temporary file)", tempdir)
    env = app_env("http://127.0.0.1:9/api/projects/unused", database.url)
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    return database
