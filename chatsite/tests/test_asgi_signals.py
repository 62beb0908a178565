"""The ASGI application starts a request without a hop to a thread: Django's
database receivers run when the request finishes instead (chatsite.asgi)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json
import chatsite.asgi
from django.core import signals
def names(signal):
    sync, async_ = signal._live_receivers(None)
    return sorted(r.__name__ for r in [*sync, *async_])
print(json.dumps({
    "started": names(signals.request_started),
    "finished": names(signals.request_finished),
}))
"""


def test_a_request_starts_without_a_thread_hop_and_finishes_with_the_cleanup() -> None:
    # A fresh interpreter: Django's test client puts `close_old_connections`
    # back on `request_started` after each request it sends.
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_DEBUG": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    receivers = json.loads(done.stdout.strip().splitlines()[-1])
    assert receivers["started"] == []
    assert {"close_old_connections", "reset_queries"} <= set(receivers["finished"])
