"""Traces reach Azure Monitor's ingestion API (here a loopback collector) when a
connection string is configured, with the agent call as a span."""

import gzip
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from testing.live import LiveServer
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]


class Collector(BaseHTTPRequestHandler):
    envelopes: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        payload = json.loads(body)
        Collector.envelopes.extend(payload if isinstance(payload, list) else [payload])
        answer = json.dumps({"itemsReceived": 1, "itemsAccepted": 1, "errors": []})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.envelopes = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_it_exports_a_span_for_each_reply(
    uvicorn_server_factory: Callable[..., LiveServer], collector: str
) -> None:
    server = uvicorn_server_factory(
        {
            "APPLICATIONINSIGHTS_CONNECTION_STRING": (
                "InstrumentationKey=00000000-0000-0000-0000-000000000000;"
                f"IngestionEndpoint={collector}"
            ),
            # Nothing may leave this machine: no statsbeat to Microsoft's endpoint.
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            # Every span: the default samples 5 traces a second, and the start-up
            # health checks can use that up before the reply's span starts.
            "OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage",
            "OTEL_TRACES_SAMPLER_ARG": "1.0",
            "CHAT_LOCAL_DELAY_MS": "1",
        }
    )
    response = httpx.post(f"{server.url}/api/chat", json={"message": "hi"}, timeout=10)
    assert response.status_code == 200

    def span_names() -> set[str]:
        return {
            e.get("data", {}).get("baseData", {}).get("name", "")
            for e in Collector.envelopes
        }

    def both_exported() -> bool:
        # The reply's span and its request's, which ends after it: they may
        # go out in two batches.
        names = span_names()
        return "chat.reply" in names and any("/api/chat" in n for n in names)

    wait_until(both_exported, interval=0.2)
