"""One structured log line per request, with a request id and no content."""

import logging

import pytest
from django.test import AsyncClient

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
