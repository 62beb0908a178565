"""Pytest fixtures shared by every app's tests (loaded with `-p chatsite.testing`).

`live_server` starts the real application under uvicorn in a subprocess, the way
production runs it, against the test database, so tests can talk HTTP to it and
then inspect the rows it wrote.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _close_async_orm_connections(django_db_setup: None) -> Iterator[None]:
    """Async ORM calls in tests run on asgiref's worker thread; its connection
    must go back before the test database is dropped."""
    yield
    asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture(autouse=True)
def _plain_static_storage(settings: object) -> None:
    # Tests run with debug off, where the manifest storage needs collectstatic;
    # in-process tests render templates without it.
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {
            "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for_subprocess() -> str:
    """The URL of the database pytest-django set up, for a server subprocess."""
    settings = connection.settings_dict
    if settings["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{settings['NAME']}"
    user = settings["USER"] or "postgres"
    password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
    host = settings["HOST"] or "127.0.0.1"
    port = settings["PORT"] or 5432
    return f"postgres://{user}{password}@{host}:{port}/{settings['NAME']}"


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int | None = None, timeout: float = 20) -> int:
        if self.process.poll() is None:
            if sig is None:
                self.process.terminate()
            else:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def start_server(env: dict[str, str], log_path: Path, *extra_args: str) -> LiveServer:
    port = free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECURE_COOKIES": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "chatsite.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            *extra_args,
        ],
        cwd=BASE_DIR,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/api/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")


@pytest.fixture
def uvicorn_server_factory(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., LiveServer]]:
    """Starts uvicorn subprocesses on the test database; stops them afterwards."""
    servers: list[LiveServer] = []

    def start(env: dict[str, str] | None = None, *extra_args: str) -> LiveServer:
        log_path = tmp_path / f"server-{len(servers)}.log"
        server = start_server(env or {}, log_path, *extra_args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def uvicorn_server(uvicorn_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return uvicorn_server_factory()
