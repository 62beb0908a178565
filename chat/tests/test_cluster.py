"""Two replicas behind a real nginx, sharing PostgreSQL and Redis: requests are
spread over both, a reply streams through nginx as it is written, and a replica
killed with SIGKILL leaves the other answering."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from testing.cluster import (
    OWNER_VARIABLE,
    Cluster,
    kill_orphans,
    require_cluster_services,
)
from testing.sse import chunks_text, iter_data, read_until_text
from testing.upstream import token_text

pytestmark = [pytest.mark.live, pytest.mark.cluster]


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    require_cluster_services()
    with Cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def cluster(running_cluster: Cluster) -> Cluster:
    """The module's cluster with every replica running and a fresh emulator."""
    running_cluster.heal()
    return running_cluster


def editor_key(cluster: Cluster) -> str:
    cluster.manage(
        "createsuperuser", "--noinput", "--username=editor", "--email=e@x.org"
    )
    return cluster.manage("api_key", "editor").strip()


def chat(cluster: Cluster, message: str) -> httpx.Response:
    body = {"message": message}
    return httpx.post(f"{cluster.url}/api/chat", json=body, timeout=30)


def test_it_spreads_requests_over_every_replica_of_one_database(
    cluster: Cluster,
) -> None:
    headers = {"Authorization": f"Bearer {editor_key(cluster)}"}
    post = {"title": "Shared", "body": "by every replica", "published": True}
    created = httpx.post(f"{cluster.url}/api/posts", json=post, headers=headers)
    assert created.status_code == 201, created.text

    served_by = set()
    for _ in range(2 * cluster.size):
        response = httpx.get(f"{cluster.url}/api/posts/{created.json()['id']}")
        assert response.status_code == 200
        assert response.json()["title"] == "Shared"
        served_by.add(cluster.replica_of(response))
    assert served_by == set(range(cluster.size))


def test_it_streams_a_reply_through_nginx_while_the_agent_holds_the_rest(
    cluster: Cluster,
) -> None:
    cluster.emulator.push(tokens=20, hold_after=2)
    body = {"message": "Say hello"}
    with httpx.stream("POST", f"{cluster.url}/api/chat", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        stream = iter_data(r.iter_lines())
        read_until_text(stream, token_text(2))
        # The rest of the reply does not exist yet: nginx passed on what it had.
        assert len(cluster.emulator.deltas) == 2
        cluster.emulator.release()
        rest = list(stream)
    assert rest[-1]["type"] == "done"
    assert chunks_text(rest) == token_text(20)[len(token_text(2)) :]


def test_it_answers_from_the_other_replica_when_one_is_killed(
    cluster: Cluster,
) -> None:
    assert cluster.kill(0) == -signal.SIGKILL
    for n in range(2 * cluster.size):
        posts = httpx.get(f"{cluster.url}/api/posts")
        assert posts.status_code == 200
        assert cluster.replica_of(posts) == 1
        # A POST nginx could not connect with was never sent: it goes on too.
        reply = chat(cluster, f"still there {n}")
        assert reply.status_code == 200
        assert cluster.replica_of(reply) == 1
        frames = list(iter_data(reply.text.splitlines()))
        assert frames[-1]["full_response"] == f"You said: still there {n}"

    cluster.restart(0)
    served_by = {
        cluster.replica_of(httpx.get(f"{cluster.url}/api/posts"))
        for _ in range(2 * cluster.size)
    }
    assert served_by == set(range(cluster.size))


def test_replicas_a_killed_run_left_behind_are_stopped_and_no_others():
    """A replica whose test process died is killed when the next cluster starts;
    a process whose owner lives (this run's) is left alone."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid nobody holds any more: a killed test run
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    orphan = subprocess.Popen(
        sleeper, env={**os.environ, OWNER_VARIABLE: str(gone.pid)}
    )
    ours = subprocess.Popen(
        sleeper, env={**os.environ, OWNER_VARIABLE: str(os.getpid())}
    )
    try:
        assert orphan.pid in kill_orphans()
        assert orphan.wait(10) == -signal.SIGKILL
        assert ours.poll() is None
    finally:
        for process in (orphan, ours):
            process.kill()
            process.wait()
