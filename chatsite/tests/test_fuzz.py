"""The API against its own OpenAPI document, fuzzed by schemathesis on a live
server: no 5xx, only documented status codes, bodies and SSE frames matching
their schemas, bad input refused and good input accepted, stateful links
included. A small fixed budget here; `make fuzz` runs over 2,000 cases."""

from collections.abc import Callable
from pathlib import Path

import pytest

from testing.live import LiveServer
from tools import fuzz

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

# About 400 cases over every operation and phase, the same ones every run.
EXAMPLES_PER_OPERATION = 12
SEED = 20261128


def test_the_api_matches_its_openapi_document(
    uvicorn_server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    api_key = fuzz.create_fuzz_user()
    server = uvicorn_server_factory(fuzz.SERVER_ENV)

    result = fuzz.run_schemathesis(
        server.url,
        api_key,
        max_examples=EXAMPLES_PER_OPERATION,
        seed=SEED,
        deterministic=True,
        report_dir=tmp_path,
        timeout=120,
    )

    assert result.exit_code == 0, result.output
    assert result.generated >= 300, result.summary()
    assert "Traceback" not in server.log()
