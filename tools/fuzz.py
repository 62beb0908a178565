"""Schemathesis against the running API, driven by /api/openapi.json.

Every operation is fuzzed, stateful links included (a created post is then read,
replaced, patched and deleted), with every check: no 5xx, only documented status
codes, bodies and SSE frames that match their schemas, bad input refused and good
input accepted. The caller is a user holding every post permission, through an
API key.

    python -m tools.fuzz [--max-examples N] [--seed N]   (make fuzz)

migrates a scratch SQLite database (or --database-url), starts uvicorn on it and
fuzzes it; chatsite/tests/test_fuzz.py runs `run_schemathesis` with a small,
fixed-seed budget against its own live server.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testing.live import migrate_scratch_database, start_server

# The offline agent, fast, and no rate limits: the fuzzer sends thousands of
# messages and a 429 would hide what it is testing.
SERVER_ENV = {
    "CHAT_BACKEND": "local",
    "CHAT_LOCAL_DELAY_MS": "1",
    "CHAT_RATE_LIMIT_PER_MINUTE": "0",
    "CHAT_MAX_CONCURRENT_STREAMS": "0",
}
FUZZ_USERNAME = "fuzz"
MIN_CASES = 2000


@dataclass
class FuzzResult:
    exit_code: int
    generated: int
    failures: list[dict[str, Any]]
    warnings: dict[str, Any]
    output: str

    def summary(self) -> str:
        failed = ", ".join(
            f"{f['code']} {f['title']} x{f['count']} ({', '.join(f['operations'])})"
            for f in self.failures
        )
        return f"schemathesis: {self.generated} cases, exit code {self.exit_code}" + (
            f"; failures: {failed}" if failed else ""
        )


def create_fuzz_user() -> str:
    """A user with every post permission and a fresh API key; returns the key."""
    from django.contrib.auth.models import Permission, User

    from chatsite.models import ApiKey

    user, _ = User.objects.get_or_create(username=FUZZ_USERNAME)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="posts")
    )
    key = ApiKey(user=user, name="schemathesis")
    raw = key.set_new_key()
    key.save()
    return raw


def run_schemathesis(
    base_url: str,
    api_key: str,
    *,
    max_examples: int,
    report_dir: Path,
    seed: int | None = None,
    deterministic: bool = False,
    workers: int = 1,
    timeout: float = 1800,
) -> FuzzResult:
    """Runs `st run` against `base_url` and reads its JSON report."""
    report = report_dir / "schemathesis.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{base_url}/api/openapi.json",
        "--header",
        f"Authorization: Bearer {api_key}",
        "--checks",
        "all",
        "--max-examples",
        str(max_examples),
        "--workers",
        str(workers),
        "--request-timeout",
        "30",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--no-color",
    ]
    if seed is not None:
        command += ["--seed", str(seed)]
    if deterministic:
        # Same cases every run (and no example database replaying old ones).
        command.append("--generation-deterministic")
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=report_dir,
    )
    output = completed.stdout + completed.stderr
    if not report.exists():
        raise RuntimeError(f"schemathesis wrote no report:\n{output}")
    data = json.loads(report.read_text())
    return FuzzResult(
        exit_code=completed.returncode,
        generated=data["test_cases"]["generated"],
        failures=data["failures"],
        warnings={name: found for name, found in data["warnings"].items() if found},
        output=output,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-examples",
        type=int,
        default=200,
        help="cases per operation and phase (default 200: over 2,000 in all)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--min-cases", type=int, default=MIN_CASES)
    parser.add_argument(
        "--database-url",
        default=None,
        help="an empty database to migrate and use (default: scratch SQLite)",
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="chatsite-fuzz-"))
    os.environ.update(SERVER_ENV)
    migrate_scratch_database(workdir, args.database_url)
    api_key = create_fuzz_user()
    server = start_server(SERVER_ENV, workdir / "server.log")
    try:
        result = run_schemathesis(
            server.url,
            api_key,
            max_examples=args.max_examples,
            seed=args.seed,
            workers=args.workers,
            report_dir=workdir,
        )
    finally:
        server.stop()
    print(result.output)
    print(result.summary())
    print(f"report and server log: {workdir}")
    problems = []
    if result.exit_code != 0:
        problems.append("schemathesis found failures")
    if result.generated < args.min_cases:
        problems.append(f"only {result.generated} cases (want {args.min_cases})")
    if "Traceback" in server.log():
        problems.append("the server logged a traceback")
    for problem in problems:
        print(f"FAIL: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
