"""The real application under uvicorn in a subprocess, the way production runs it.

Tests start it on the test database (the `uvicorn_server_factory` fixture of
`testing.plugin`) so they can talk HTTP to it and then inspect the rows it wrote;
tools and benchmarks start it on a scratch database (`migrate_scratch_database`).
"""

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from django.db import connection

from testing.waiting import wait_until

BASE_DIR = Path(__file__).resolve().parent.parent
START_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url_for_subprocess() -> str:
    """The URL of the database Django is connected to, for a server subprocess."""
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

    def answers(self) -> bool:
        """True once /api/health answers 200; raises if the process has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/api/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

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
    """uvicorn serving the app on Django's current database, once it answers."""
    port = free_port()
    full_env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "DJANGO_DEBUG": "0",
        "DJANGO_SECURE_COOKIES": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    with log_path.open("wb") as log:
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
                # The image's event loop and HTTP protocol (Dockerfile).
                "--loop",
                "chatsite.serving:new_event_loop",
                "--http",
                "chatsite.serving:HttpToolsProtocol",
                *extra_args,
            ],
            cwd=BASE_DIR,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until(server.answers, timeout=START_SECONDS, interval=0.1)
    except AssertionError:
        server.stop()
        raise RuntimeError(f"server did not start:\n{server.log()}") from None
    except BaseException:
        server.stop()
        raise
    return server


def migrate_scratch_database(workdir: Path, database_url: str | None = None) -> None:
    """Sets Django up, outside pytest, on an empty database (by default a new
    SQLite file in `workdir`) and migrates it."""
    os.environ["DATABASE_URL"] = database_url or f"sqlite:///{workdir / 'db.sqlite3'}"
    os.environ.setdefault("DJANGO_SECRET_KEY", "scratch-only-" + os.urandom(24).hex())
    os.environ.update(DJANGO_DEBUG="0", DJANGO_SECURE_COOKIES="0")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
