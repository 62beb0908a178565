"""One structured log line per request, with a request id and no content."""

import json
import logging
from collections.abc import Callable

import httpx
import pytest
from django.test import AsyncClient

from testing.live import LiveServer
from testing.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "chatsite.request"]


async def test_it_returns_and_logs_a_request_id(
    async_client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="chatsite.request"):
        response = await async_client.get("/api/health")
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    (record,) = request_records(caplog)
    assert record.request_id == request_id
    assert (record.method, record.path, record.status) == ("GET", "/api/health", 200)
    assert record.duration_ms >= 0


async def test_it_keeps_a_well_formed_incoming_id(async_client: AsyncClient) -> None:
    response = await async_client.get(
        "/api/health", headers={"X-Request-ID": "edge-1234.abc"}
    )
    assert response["X-Request-ID"] == "edge-1234.abc"
    response = await async_client.get(
        "/api/health", headers={"X-Request-ID": "bad id\nInjected: 1"}
    )
    assert response["X-Request-ID"] != "bad id\nInjected: 1"


async def test_it_logs_streams_when_they_end_without_their_content(
    async_client: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "my password is hunter2"
    with caplog.at_level(logging.INFO, logger="chatsite.request"):
        response = await async_client.post(
            "/api/chat", {"message": secret}, content_type="application/json"
        )
        assert request_records(caplog) == []
        body = b"".join([part async for part in response.streaming_content])
    (record,) = request_records(caplog)
    assert record.status == 200
    assert record.reply_status == "complete"
    assert record.chunks == body.count(b'"type":"chunk"')
    assert record.ttfc_ms > 0
    assert record.backend == "local"
    assert "hunter2" not in caplog.text


def test_a_server_logs_a_stream_once_it_has_sent_it(
    uvicorn_server_factory: Callable[..., LiveServer],
) -> None:
    """Under uvicorn an event stream's items go out unwrapped; its log line is
    written when the server closes the response, with what the reply added."""
    server = uvicorn_server_factory({"LOG_LEVEL": "INFO"})
    secret = "my password is hunter2"
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json={"message": secret}, timeout=30
    ) as response:
        request_id = response.headers["X-Request-ID"]
        body = b"".join(response.iter_bytes())
    assert b'"type":"done"' in body

    def logged() -> list[dict]:
        lines = [
            json.loads(line) for line in server.log().splitlines() if line[:1] == "{"
        ]
        return [
            line
            for line in lines
            if line.get("logger") == "chatsite.request"
            and line.get("request_id") == request_id
        ]

    wait_until(logged, timeout=10, interval=0.05)
    (line,) = logged()
    assert (line["method"], line["path"], line["status"]) == ("POST", "/api/chat", 200)
    assert line["reply_status"] == "complete"
    assert line["chunks"] == body.count(b'"type":"chunk"') > 0
    assert line["ttfc_ms"] > 0
    assert "hunter2" not in server.log()
