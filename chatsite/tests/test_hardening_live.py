"""Hardening on a live server run with the image's uvicorn options (Dockerfile CMD):
forged X-Forwarded-For, the Host header, oversized request heads and bodies, a
Redis that cannot be reached, response headers, and `make run` with debug off."""

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer, free_port
from testing.procfs import open_paths
from testing.sse import iter_data
from testing.upstream import server_env
from testing.waiting import wait_until

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

BASE_DIR = Path(__file__).resolve().parents[2]
DOCKERFILE = (BASE_DIR / "Dockerfile").read_text()
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
MiB = 1024 * 1024


def image_options() -> list[str]:
    """uvicorn's options in the image's CMD, less --host and --port."""
    (command,) = re.findall(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
    argv = json.loads(command)
    options = argv[argv.index("chatsite.asgi:application") + 1 :]
    for name in ("--host", "--port"):
        at = options.index(name)
        del options[at : at + 2]
    return options


def image_env(name: str) -> str:
    (value,) = re.findall(rf"^\s*(?:ENV )?{name}=(\S+?)(?: \\)?$", DOCKERFILE, re.M)
    return value


@pytest.fixture
def production_server(
    uvicorn_server_factory: Callable[..., LiveServer],
) -> Callable[..., LiveServer]:
    def start(**env: str) -> LiveServer:
        return uvicorn_server_factory(
            {"TRUSTED_PROXY_HOPS": image_env("TRUSTED_PROXY_HOPS"), **env},
            *image_options(),
        )

    return start


@pytest.fixture
def emulator() -> Iterator[EmulatorThread]:
    with EmulatorThread(config=EmulatorConfig()) as emulator:
        yield emulator


def connect(server: LiveServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=15)


def read_response(sock: socket.socket) -> tuple[int | None, bytes]:
    """The status and what the server sent, until its body is complete or it
    closes (status None: closed without a response)."""
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            break
        if not part:
            break
        data += part
        head, blank, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *([0-9]+)", head)
        if blank and length and len(body) >= int(length.group(1)):
            break
        if blank and CHUNKED.search(head) and body.endswith(b"0\r\n\r\n"):
            break
    if not data:
        return None, b""
    return int(data.split(b" ", 2)[1]), data


CHUNKED = re.compile(rb"(?im)^transfer-encoding: *chunked")


def json_body(response: bytes) -> dict:
    head, _, body = response.partition(b"\r\n\r\n")
    if CHUNKED.search(head):
        # One chunk, then the last: "<size>\r\n<data>\r\n0\r\n\r\n".
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    return json.loads(body)


# --- The client's address behind the ingress ------------------------------------------


def chat(
    server: LiveServer, forwarded_for: str
) -> contextlib.AbstractContextManager[httpx.Response]:
    headers = {"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"}
    return httpx.stream(
        "POST",
        f"{server.url}/api/chat",
        json={"message": "hi"},
        headers=headers,
        timeout=15,
    )


def first_frame(response: httpx.Response) -> tuple[dict, Iterator[dict]]:
    """The reply's first frame, and the rest to hold on to: dropping the iterator
    would close the connection and end the reply."""
    assert response.status_code == 200
    frames = iter_data(response.iter_lines())
    return next(frames), frames


def one_stream_each(
    production_server: Callable[..., LiveServer], emulator: EmulatorThread, **env: str
) -> LiveServer:
    """A server allowing each caller one stream, whose agent holds every reply
    after its first token, so that a caller's first stream stays open."""
    emulator.configure(hold_after=1)
    return production_server(
        **server_env("azure_agents", emulator),
        CHAT_MAX_CONCURRENT_STREAMS="1",
        CHAT_DRAIN_SECONDS="1",
        **env,
    )


def test_it_limits_the_address_the_ingress_appended_not_the_forged_one(
    production_server: Callable[..., LiveServer], emulator: EmulatorThread
) -> None:
    server = one_stream_each(production_server, emulator, DJANGO_SSL_REDIRECT="1")
    assert image_env("TRUSTED_PROXY_HOPS") == "1"

    with chat(server, "203.0.113.1, 198.51.100.7") as held:
        first, _rest = first_frame(held)
        assert first["type"] == "metadata"
        # What the client writes goes before what the ingress appends.
        for forged in ("203.0.113.2", "10.0.0.1", "198.51.100.8, 203.0.113.3", ""):
            with chat(server, f"{forged}, 198.51.100.7".lstrip(", ")) as refused:
                assert refused.status_code == 429, forged
        # Another client behind the same ingress has slots of its own.
        with chat(server, "203.0.113.1, 198.51.100.8") as other:
            assert first_frame(other)[0]["type"] == "metadata"

    # The scheme the ingress forwards still counts: https is not redirected.
    posts = f"{server.url}/api/posts"
    assert httpx.get(posts, headers={"X-Forwarded-Proto": "https"}).status_code == 200
    redirect = httpx.get(posts)
    assert redirect.status_code == 301
    assert redirect.headers["location"].startswith("https://")


def test_it_ignores_forwarded_for_without_trusted_proxies(
    production_server: Callable[..., LiveServer], emulator: EmulatorThread
) -> None:
    server = one_stream_each(production_server, emulator, TRUSTED_PROXY_HOPS="0")

    with chat(server, "203.0.113.1") as held:
        first, _rest = first_frame(held)
        assert first["type"] == "metadata"
        for forged in ("203.0.113.2", "198.51.100.8, 203.0.113.3"):
            with chat(server, forged) as refused:
                assert refused.status_code == 429, forged


# --- The Host header ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/api/posts"),
        ("POST", "/api/chat"),
        ("GET", "/api/health"),
        ("GET", "/api/health/ready"),
        ("GET", "/admin/login/"),
    ],
)
def test_it_refuses_hosts_that_are_not_allowed(
    production_server: Callable[..., LiveServer], method: str, path: str
) -> None:
    server = production_server(
        DJANGO_ALLOWED_HOSTS="chat.example.com,localhost,127.0.0.1"
    )

    def status(host: str) -> int:
        response = httpx.request(
            method,
            f"{server.url}{path}",
            json={"message": "hi"},
            headers={"Host": host, "X-Forwarded-Proto": "https"},
        )
        return response.status_code

    assert status("evil.example") == 400
    assert status("chat.example.com.evil.example") == 400
    assert status("localhost") != 400


# --- Request heads --------------------------------------------------------------------


def test_it_refuses_a_megabyte_of_headers(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server()

    with connect(server) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(1024):
                sock.sendall(b"a" * 1024)
            sock.sendall(b"\r\n\r\n")
        status, response = read_response(sock)

    assert status == 431
    assert json_body(response) == {
        "error": "request head is larger than 65536 bytes",
        "code": "head_too_large",
    }
    assert server.answers()


def test_it_serves_heads_up_to_the_ingress_limit_on_a_kept_alive_connection(
    production_server: Callable[..., LiveServer],
) -> None:
    """Envoy lets 60 KiB of request head through: two such requests in turn on
    one connection are served, each head counted from its own start, and a
    third, longer one is refused."""
    server = production_server()
    filler = b"a" * (60 * 1024 - 100)
    request = (
        b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: "
        + filler
        + b"\r\n\r\n"
    )

    with connect(server) as sock:
        for _ in range(2):
            for at in range(0, len(request), 4096):  # as a slow client sends it
                sock.sendall(request[at : at + 4096])
            status, response = read_response(sock)
            assert status == 200, response
            assert json_body(response)["status"] == "healthy"
        sock.sendall(request.replace(b"X-Filler: ", b"X-Filler: " + filler))
        status, response = read_response(sock)
        assert status == 431, response


def test_a_long_head_behind_a_stream_closes_the_connection_and_nothing_else(
    production_server: Callable[..., LiveServer], emulator: EmulatorThread
) -> None:
    """A request pipelined behind a chat stream with a head past the limit: an
    answer would land inside the stream's body, so the connection is closed;
    what the stream sent before stays whole."""
    emulator.configure(hold_after=1)
    server = production_server(**server_env("azure_agents", emulator))
    body = b'{"message": "hi"}'
    with connect(server) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        received = b""
        while b'"type": "chunk"' not in received and b'"type":"chunk"' not in received:
            part = sock.recv(65536)
            assert part, received
            received += part
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(
                b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: "
                + b"a" * (128 * 1024)
            )
        with contextlib.suppress(ConnectionResetError):  # closed with data unread
            while part := sock.recv(65536):
                received += part

    assert received.startswith(b"HTTP/1.1 200 ")
    assert received.count(b"HTTP/1.1") == 1
    assert b"head_too_large" not in received
    assert server.answers()


def test_it_refuses_too_many_headers(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server()
    many = {f"X-Filler-{n}": "a" for n in range(150)}

    response = httpx.get(f"{server.url}/api/health", headers=many)

    assert response.status_code == 431
    assert response.json()["code"] == "too_many_headers"


def test_it_serves_requests_with_ordinary_large_headers(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server()
    headers = {
        "Cookie": "; ".join(f"c{n}={'v' * 100}" for n in range(80)),
        **{f"X-Custom-{n}": "value" for n in range(40)},
    }

    response = httpx.get(f"{server.url}/api/posts", headers=headers)

    assert response.status_code == 200


# --- Request bodies -------------------------------------------------------------------


def files_open_under(pid: int, directory: Path) -> list[str]:
    return [path for path in open_paths(pid) if path.startswith(str(directory))]


CHUNKED_CHAT = (
    b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def test_it_refuses_a_chunked_body_at_the_limit_without_reading_the_rest(
    production_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    spool = tmp_path / "server-tmp"
    spool.mkdir()
    server = production_server(TMPDIR=str(spool))
    total = 64 * MiB
    chunk = b"x" * 65536
    sent = 0
    spooled: list[str] = []

    with connect(server) as sock:
        # A small send buffer, so that `sent` is close to what the server read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.sendall(CHUNKED_CHAT)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                spooled += files_open_under(server.process.pid, spool)
        status, response = read_response(sock)

    assert status == 413
    assert json_body(response) == {
        "error": f"request body is larger than {MiB} bytes",
        "code": "too_large",
    }
    # Refused once past 1 MiB; what else was sent sat in socket buffers.
    assert sent < 16 * MiB
    assert spooled == []


def test_it_refuses_a_declared_length_before_reading_the_body(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server()

    with connect(server) as sock:
        sock.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        )
        status, response = read_response(sock)

    assert status == 413
    assert json_body(response)["code"] == "too_large"


def test_it_reads_chunked_bodies_under_the_limit(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server()
    message = "a" * 4000

    def body() -> Iterator[bytes]:
        encoded = json.dumps({"message": message, "stream": False}).encode()
        for start in range(0, len(encoded), 1000):
            yield encoded[start : start + 1000]

    response = httpx.post(
        f"{server.url}/api/chat",
        content=body(),
        headers={"Content-Type": "application/json"},
        timeout=15,
    )

    assert response.status_code == 200
    assert message in response.json()["full_response"]


# --- Redis out of reach ---------------------------------------------------------------


def test_it_answers_503_json_when_redis_cannot_be_reached(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server(
        REDIS_URL=DEAD_REDIS_URL,
        CHAT_RATE_LIMIT_PER_MINUTE="20",
        CHAT_MAX_CONCURRENT_STREAMS="3",
    )
    chat_url = f"{server.url}/api/chat"

    for headers in ({}, {"Idempotency-Key": "one"}):
        response = httpx.post(chat_url, json={"message": "hi"}, headers=headers)
        assert response.status_code == 503
        assert response.json() == {
            "error": "a service the request needs is unavailable; try again shortly",
            "code": "unavailable",
        }
        assert response.headers["retry-after"] == "5"
    assert httpx.get(f"{server.url}/api/posts").status_code == 200
    ready = httpx.get(f"{server.url}/api/health/ready")
    assert ready.status_code == 503
    assert ready.json()["failed"] == ["cache"]
    assert "127.0.0.1:1" not in ready.text
    assert "cache unreachable: POST /api/chat" in server.log()


# --- Response headers -----------------------------------------------------------------


def test_it_names_no_server_and_denies_unused_browser_features(
    production_server: Callable[..., LiveServer],
) -> None:
    server = production_server()

    response = httpx.get(f"{server.url}/api/health")

    assert "server" not in response.headers
    assert "camera=()" in response.headers["permissions-policy"]


# --- make run with debug off ----------------------------------------------------------


def test_make_run_with_debug_off_serves_pages(tmp_path: Path) -> None:
    project = tmp_path / "project"
    for name in ("chat", "chatsite", "posts", "static", "templates"):
        shutil.copytree(
            BASE_DIR / name,
            project / name,
            ignore=shutil.ignore_patterns("tests", "__pycache__"),
        )
    for name in ("manage.py", "Makefile", "requirements.txt"):
        shutil.copy2(BASE_DIR / name, project / name)
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": "make-run-test-" + os.urandom(24).hex(),
        "DJANGO_SECURE_COOKIES": "0",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "LOG_LEVEL": "WARNING",
    }
    log_path = tmp_path / "make-run.log"
    make = [
        "make",
        "run",
        f"VENV={BASE_DIR / '.venv'}",
        f"PORT={port}",
        "-o",
        "install",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            make,
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def page() -> httpx.Response | None:
        assert process.poll() is None, log_path.read_text()
        with contextlib.suppress(httpx.TransportError):
            return httpx.get(f"http://127.0.0.1:{port}/")
        return None

    try:
        response = wait_until(page, timeout=60, interval=0.2)
        assert response.status_code == 200, log_path.read_text()
        (script,) = re.findall(r'src="(/static/chat/[^"]+\.js)"', response.text)
        assert re.search(r"\.[0-9a-f]{12}\.js$", script)
        assert httpx.get(f"http://127.0.0.1:{port}{script}").status_code == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
