"""Fixtures every app's tests share, loaded with `-p testing.plugin`."""

import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from testing.live import LiveServer, start_server


@pytest.fixture(autouse=True)
async def _close_async_orm_connections() -> AsyncIterator[None]:
    # Async ORM calls in tests run on asgiref's worker thread; its connection
    # must go back, or PostgreSQL refuses to drop the test database in use.
    yield
    await sync_to_async(connections.close_all)()


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


def _servers(log_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """A factory of uvicorn subprocesses logging to `log_dir`, stopped at the end."""
    servers: list[LiveServer] = []

    def start(env: dict[str, str] | None = None, *extra_args: str) -> LiveServer:
        log_path = log_dir / f"server-{len(servers)}.log"
        server = start_server(env or {}, log_path, *extra_args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def collected_static() -> None:
    """STATIC_ROOT, collected once a run: servers run with DEBUG off, where pages
    name static files by the manifest that collectstatic writes. Under
    pytest-xdist the first worker collects (under a lock) and the others find its
    run's id in the lock file: collecting again would rewrite the manifest under
    the first worker's servers."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    root = Path(settings.STATIC_ROOT)
    Path(settings.VAR_DIR).mkdir(parents=True, exist_ok=True)
    with open(Path(settings.VAR_DIR) / "collectstatic-run", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        if run and lock.read() == run and (root / "staticfiles.json").exists():
            return
        call_command("collectstatic", interactive=False, verbosity=0)
        lock.seek(0)
        lock.truncate()
        lock.write(run)


@pytest.fixture(scope="session", autouse=True)
def _static_first_under_xdist(request: pytest.FixtureRequest) -> None:
    """Under pytest-xdist every worker waits for STATIC_ROOT before its first
    test: while one worker collects, a test in another that builds the
    middleware (ServeStatic lists STATIC_ROOT and stats every file) found files
    the collecting worker was replacing (FileNotFoundError)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        request.getfixturevalue("collected_static")


@pytest.fixture
def uvicorn_server_factory(
    collected_static: None, transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., LiveServer]]:
    """Starts uvicorn subprocesses on the test database; stops them afterwards."""
    yield from _servers(tmp_path)


@pytest.fixture(scope="module")
def module_server_factory(
    collected_static: None,
    django_db_setup: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., LiveServer]]:
    """Starts uvicorn subprocesses that serve a whole module on the test database,
    whose tests flush it after each (transactional_db)."""
    yield from _servers(tmp_path_factory.mktemp("servers"))


@pytest.fixture
def uvicorn_server(uvicorn_server_factory: Callable[..., LiveServer]) -> LiveServer:
    return uvicorn_server_factory()
