"""The client snippets in README.md's chat API section, run as written
against a live server (only its address changes)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from emulator import EmulatorConfig, EmulatorThread
from testing.live import LiveServer
from testing.readme import snippet
from testing.upstream import server_env

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

REPLY = "Grüße 👋 from the agent\u2028 with a line separator"


@pytest.fixture
def server(uvicorn_server_factory: Any) -> LiveServer:
    with EmulatorThread(config=EmulatorConfig(reply=REPLY)) as emulator:
        yield uvicorn_server_factory(server_env("azure_agents", emulator))


def test_the_python_snippet_prints_the_reply(
    server: LiveServer, tmp_path: Path
) -> None:
    code = snippet("python", "chat").replace("http://127.0.0.1:8000", server.url)
    script = tmp_path / "client.py"
    script.write_text(
        code
        + "\nimport json\nfinal = chat('hello')\nprint()\nprint(json.dumps(final))\n"
    )
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    printed, final = run.stdout.rsplit("\n", 2)[:2]
    assert printed == REPLY
    assert json.loads(final)["type"] == "done"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_the_fetch_snippet_reads_the_reply(server: LiveServer, tmp_path: Path) -> None:
    code = snippet("js", "chat").replace("http://127.0.0.1:8000", server.url)
    (tmp_path / "client.mjs").write_text(code)
    (tmp_path / "main.mjs").write_text(
        'import { chat } from "./client.mjs";\n'
        "let text = '';\n"
        "const final = await chat('hello', (piece) => { text += piece; });\n"
        "process.stdout.write(JSON.stringify({ text, final }));\n"
    )
    run = subprocess.run(
        ["node", str(tmp_path / "main.mjs")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["text"] == REPLY
    assert result["final"]["type"] == "done"
    assert result["final"]["full_response"] == REPLY
