"""Replicas of the app behind a real nginx, the way it scales out in production.

A `Cluster` starts one emulator as every replica's agent service, a scratch
PostgreSQL database (created and migrated, dropped at the end), a Redis database
of its own (emptied at the start and the end), N uvicorn replicas sharing both,
and nginx in front of them, round-robin. nginx adds an `X-Upstream` header naming
the replica that answered (`replica_of`); a test can kill a replica and bring it
back on the same address (`kill`, `restart`). With `redis_gates=True` each replica
reaches Redis through a gate of its own, which a test shuts to take Redis away
from it, or from all of them (`shut_redis`, `open_redis`).

    require_cluster_services()
    with Cluster(tmp_path) as cluster:
        httpx.get(f"{cluster.url}/api/posts")
"""

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self
from unittest import mock
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from django.db import connection

from emulator import EmulatorConfig, EmulatorThread
from emulator.threaded import START_TIMEOUT_SECONDS, LoopThread
from testing import live
from testing.gate import Gate
from testing.live import (
    BASE_DIR,
    LiveServer,
    database_url_for_subprocess,
    free_port,
    start_server,
)
from testing.upstream import server_env
from testing.waiting import wait_until

NGINX_PATHS = ("nginx", "/usr/sbin/nginx")
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/12"  # the cluster's own database
LEASE_SECONDS = "2"
STOP_SECONDS = 20.0
# Every replica's environment names the test process that started it, so that
# replicas a killed test run left behind are found and stopped (`kill_orphans`).
OWNER_VARIABLE = "CHATSITE_TEST_CLUSTER_OWNER"

NGINX_CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$remote_addr "$request" $status $upstream_addr';
    access_log {dir}/access.log upstream;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream replicas {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            # Buffering stays at nginx's default (on), as in most deployments;
            # the app's X-Accel-Buffering: no turns it off for event streams.
            proxy_read_timeout 300s;
            # nginx's default, spelled out: a request goes to the next replica when
            # one refuses or times out, but a POST already sent is never repeated.
            proxy_next_upstream error timeout;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""
# max_fails=0: a dead replica is tried and passed over on each of its turns
# instead of being benched for 10 s, so a restarted one serves again at once.
NGINX_SERVER = "        server 127.0.0.1:{port} max_fails=0;"


def nginx_binary() -> str | None:
    return next(filter(None, map(shutil.which, NGINX_PATHS)), None)


class GateThread(LoopThread):
    """A `Gate` on its own event loop, for tests and subprocesses that are not on
    one: `shut()` resets every connection through it and refuses new ones until
    `open()`, on the same port."""

    thread_name = "tcp-gate"

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        super().__init__()
        self.gate = Gate(target_port, target_host)
        self.is_open = False
        self._held: socket.socket | None = None

    @property
    def port(self) -> int:
        return self.gate.port

    async def _open(self) -> None:
        await self.gate.open()
        self.is_open = True

    async def _close(self) -> None:
        await self.gate.shut()

    def shut(self) -> None:
        if self.is_open:
            self._run(self.gate.shut())
            self.is_open = False
            # Bound but not listening, the port refuses connections and stays
            # ours: a server another test starts on a free port could take it
            # and leave the replicas' connections hanging instead.
            self._held = socket.socket()
            self._held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._held.bind(("127.0.0.1", self.port))

    def open(self) -> None:
        if not self.is_open:
            if self._held is not None:
                self._held.close()
                self._held = None
            self._run(self.gate.open())
            self.is_open = True

    def stop(self) -> None:
        super().stop()
        if self._held is not None:
            self._held.close()
            self._held = None

    def _run(self, step: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "the gate is not started"
        asyncio.run_coroutine_threadsafe(step, self._loop).result(START_TIMEOUT_SECONDS)


def backend_env(backend: str, emulator: EmulatorThread, **extra: str) -> dict[str, str]:
    """A replica's environment for `backend`: the emulator as its upstream, or
    none for the local agent."""
    if backend == "local":
        return {"CHAT_BACKEND": backend, **extra}
    return server_env(backend, emulator, **extra)


def postgres_url() -> str:
    """The maintenance database of the PostgreSQL server the tests use: Django's
    when it is PostgreSQL, else the one on 127.0.0.1:5432."""
    if connection.vendor != "postgresql":
        return POSTGRES_URL
    return urlunsplit(
        urlsplit(database_url_for_subprocess())._replace(path="/postgres")
    )


def kill_orphans() -> list[int]:
    """Kills the replicas of earlier test runs whose test process is gone (a
    killed pytest leaves them running, beating into the cluster's Redis
    database, where they would count as live replicas of this run), and
    returns their pids."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        prefix = f"{OWNER_VARIABLE}=".encode()
        owner = next((v[len(prefix) :] for v in environ if v.startswith(prefix)), None)
        if owner is None or not owner.isdigit() or _alive(int(owner)):
            continue
        try:
            os.kill(int(entry.name), signal.SIGKILL)
            killed.append(int(entry.name))
        except ProcessLookupError:
            pass
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def missing_services() -> list[str]:
    """What a cluster needs and this machine lacks."""
    missing = []
    if nginx_binary() is None:
        missing.append("nginx (apt-get install nginx)")
    try:
        psycopg.connect(postgres_url(), connect_timeout=3).close()
    except psycopg.OperationalError:
        missing.append(f"PostgreSQL at {postgres_url()}")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.ConnectionError:
        missing.append(f"Redis at {REDIS_URL}")
    finally:
        client.close()
    return missing


def require_cluster_services() -> None:
    """Skips the test when nginx, PostgreSQL or Redis is missing; under CI=true,
    fails it instead."""
    if missing := missing_services():
        reason = "a cluster needs " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


class Cluster:
    """`replicas` uvicorn processes behind nginx, with `env` added to (and
    overriding) what each replica gets: the emulator as the `backend`'s upstream
    (no upstream for `local`), the shared DATABASE_URL and REDIS_URL (through
    its gate, with `redis_gates`), CHAT_ON_DISCONNECT=continue,
    CHAT_LEASE_SECONDS=2 and TRUSTED_PROXY_HOPS=1 (nginx is the one proxy)."""

    def __init__(
        self,
        workdir: Path,
        *,
        replicas: int = 2,
        env: Mapping[str, str] | None = None,
        backend: str = "azure_agents",
        emulator_config: EmulatorConfig | None = None,
        redis_gates: bool = False,
    ) -> None:
        self.workdir = workdir
        self.size = replicas
        self.extra_env = dict(env or {})
        self.backend = backend
        self.emulator = EmulatorThread(config=emulator_config or EmulatorConfig())
        self.database_url = ""
        self.redis_url = REDIS_URL  # direct, for the test itself
        redis_port = urlsplit(REDIS_URL).port or 6379
        self.redis_gates = (
            [GateThread(redis_port) for _ in range(replicas)] if redis_gates else []
        )
        self.env: dict[str, str] = {}
        self.replicas: list[LiveServer] = []
        self.ports: list[int] = []
        self.nginx: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._starts = 0
        self._cleanup = ExitStack()

    # -- what tests use ---------------------------------------------------------

    @property
    def url(self) -> str:
        """nginx, in front of every replica."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def replica_urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.ports]

    def replica_of(self, response: httpx.Response) -> int:
        """The index of the replica that answered a request made through nginx."""
        # $upstream_addr lists every replica tried, the one that answered last.
        tried = response.headers["X-Upstream"].replace(" : ", ", ").split(", ")
        return self.ports.index(int(tried[-1].rpartition(":")[2]))

    def kill(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Sends `sig` to replica `index` and waits for it to exit; its exit code."""
        return self.replicas[index].stop(sig, timeout=STOP_SECONDS)

    def restart(self, index: int) -> LiveServer:
        """Replica `index` stopped (if it still runs) and started again on its
        port, the address nginx knows; returns once it answers."""
        self.replicas[index].stop(timeout=STOP_SECONDS)
        self.replicas[index] = self._start_replica(index, self.ports[index])
        return self.replicas[index]

    def heal(self) -> None:
        """Every replica that died is restarted, and the emulator forgets its
        threads, runs, recordings and holds; the database and Redis keep theirs."""
        for index, replica in enumerate(self.replicas):
            if replica.process.poll() is not None:
                self.restart(index)
        self.emulator.reset()

    def manage(self, *args: str) -> str:
        """`manage.py` with `args` on the cluster's database; its output."""
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env={**os.environ, "DJANGO_DEBUG": "0", **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def shut_redis(self, *indexes: int) -> None:
        """Takes Redis away from replicas `indexes` (all by default): their
        connections to it are reset and new ones refused. Needs `redis_gates`."""
        for index in indexes or range(self.size):
            self.redis_gates[index].shut()

    def open_redis(self, *indexes: int) -> None:
        """Gives Redis back to replicas `indexes` (all by default)."""
        for index in indexes or range(self.size):
            self.redis_gates[index].open()

    def replica_logs(self) -> str:
        """What every replica this cluster started logged, killed ones included."""
        return "".join(
            path.read_text(errors="replace")
            for path in sorted(self.workdir.glob("replica-*.log"))
        )

    def nginx_log(self) -> str:
        return "".join(
            (self.workdir / name).read_text(errors="replace")
            for name in ("error.log", "access.log")
            if (self.workdir / name).exists()
        )

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Self:
        kill_orphans()
        try:
            self._start_emulator()
            self._start_redis()
            self._start_database()
            self._start_redis_gates()
            self.env = backend_env(
                self.backend,
                self.emulator,
                DATABASE_URL=self.database_url,
                REDIS_URL=self.redis_url,
                CHAT_ON_DISCONNECT="continue",
                CHAT_LEASE_SECONDS=LEASE_SECONDS,
                TRUSTED_PROXY_HOPS="1",
                **{OWNER_VARIABLE: str(os.getpid())},
                **self.extra_env,
            )
            self.manage("migrate", "--noinput", "-v", "0")
            self._start_replicas()
            self._start_nginx()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start_emulator(self) -> None:
        self.emulator.start()
        self._cleanup.callback(self.emulator.stop)

    def _start_redis(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        client.flushdb()
        self._cleanup.callback(client.close)
        self._cleanup.callback(client.flushdb)

    def _start_redis_gates(self) -> None:
        for gate in self.redis_gates:
            gate.start()
            self._cleanup.callback(gate.stop)

    def _replica_env(self, index: int) -> dict[str, str]:
        if not self.redis_gates:
            return self.env
        netloc = f"127.0.0.1:{self.redis_gates[index].port}"
        through = urlunsplit(urlsplit(self.redis_url)._replace(netloc=netloc))
        return {**self.env, "REDIS_URL": through}

    def _start_database(self) -> None:
        admin_url = postgres_url()
        name = f"chatsite_cluster_{secrets.token_hex(4)}"
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")

        def drop() -> None:
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

        self._cleanup.callback(drop)
        self.database_url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))

    def _start_replicas(self) -> None:
        with ThreadPoolExecutor(self.size) as pool:
            starting = [pool.submit(self._start_replica, i) for i in range(self.size)]
        # Those that started are stopped at the end even when another failed.
        self.replicas = [f.result() for f in starting if f.exception() is None]
        self._cleanup.callback(self._stop_replicas)
        for future in starting:
            future.result()
        self.ports = [int(replica.url.rpartition(":")[2]) for replica in self.replicas]

    def _start_replica(self, index: int, port: int | None = None) -> LiveServer:
        self._starts += 1
        log_path = self.workdir / f"replica-{index}-{self._starts}.log"
        env = self._replica_env(index)
        if port is None:
            return start_server(env, log_path)
        # start_server picks a free port; a restarted replica needs its old one.
        with mock.patch.object(live, "free_port", lambda: port):
            return start_server(env, log_path)

    def _stop_replicas(self) -> None:
        # Every replica is told at once, so their shutdowns overlap.
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.terminate()
        for replica in self.replicas:
            replica.stop(timeout=STOP_SECONDS)

    def _start_nginx(self) -> None:
        self.port = free_port()
        servers = "\n".join(NGINX_SERVER.format(port=port) for port in self.ports)
        # As root, nginx's workers would run as nobody, who cannot enter a
        # test's private temporary directory to buffer a body.
        user = "user root;\n" if os.geteuid() == 0 else ""
        config = self.workdir / "nginx.conf"
        config.write_text(
            NGINX_CONF.format(
                user=user, dir=self.workdir, servers=servers, port=self.port
            )
        )
        self.nginx = subprocess.Popen(
            [
                nginx_binary() or "nginx",
                "-p",
                str(self.workdir),
                "-c",
                str(config),
                "-e",
                str(self.workdir / "error.log"),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        self._cleanup.callback(self._stop_nginx)
        wait_until(self._nginx_answers, interval=0.05)

    def _nginx_answers(self) -> bool:
        assert self.nginx is not None
        if self.nginx.poll() is not None:
            raise RuntimeError(f"nginx exited early:\n{self.nginx_log()}")
        try:
            return httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def _stop_nginx(self) -> None:
        assert self.nginx is not None
        # SIGTERM is nginx's fast shutdown: it does not wait for open streams.
        self.nginx.terminate()
        try:
            self.nginx.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.nginx.kill()
            self.nginx.wait(5)
