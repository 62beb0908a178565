"""Each backend loads only its own SDK: importing one, in a fresh interpreter,
imports no other backend module and no other service's client library."""

import functools
import json
import subprocess
import sys

import pytest

from chat.backends import ALIASES

# Backend module -> client libraries it must not load.
FOREIGN_SDKS = {
    "chat.backends.local": ["azure", "openai"],
    "chat.backends.azure_agents": ["openai", "azure.ai.projects"],
    "chat.backends.foundry": ["azure.ai.agents"],
    "chat.backends.openai_compat": ["azure.ai.agents", "azure.ai.projects"],
}
SHARED = {"chat.backends", "chat.backends.base"}


@functools.cache
def modules_loaded_by(module: str) -> frozenset[str]:
    script = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return frozenset(json.loads(completed.stdout))


def test_it_checks_every_backend() -> None:
    assert {path.rpartition(".")[0] for path in ALIASES.values()} == set(FOREIGN_SDKS)


@pytest.mark.parametrize("module", sorted(FOREIGN_SDKS))
def test_a_backend_imports_no_other_backend(module: str) -> None:
    loaded = modules_loaded_by(module)

    backends = {
        name
        for name in loaded
        if name.startswith("chat.backends.") and not name.startswith("chat.backends._")
    }
    assert backends - SHARED == {module}


@pytest.mark.parametrize("module", sorted(FOREIGN_SDKS))
def test_a_backend_loads_no_other_services_sdk(module: str) -> None:
    loaded = modules_loaded_by(module)

    for package in FOREIGN_SDKS[module]:
        assert package not in loaded, f"{module} loads {package}"
