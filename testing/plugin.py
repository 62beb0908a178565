"""Fixtures every app's tests share, loaded with `-p testing.plugin`."""

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
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
