"""The runtime packages import nothing that the production image leaves out."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("chat", "chatsite", "posts")
FORBIDDEN = frozenset(
    {
        "emulator",
        "bench",
        "testing",
        "tools",
        "pytest",
        "hypothesis",
        "schemathesis",
    }
)
TEST_MODULES = frozenset({"tests", "conftest"})


def runtime_modules() -> Iterator[Path]:
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).parts
            if "tests" in parts or "migrations" in parts:
                continue
            yield path


def imported_modules(path: Path) -> Iterator[str]:
    """Every module an import statement names, relative ones with their dots."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            yield module
            # `from . import tests` names a module in its alias.
            yield from (f"{module.rstrip('.')}.{alias.name}" for alias in node.names)


def forbidden(module: str) -> bool:
    parts = [part for part in module.split(".") if part]
    top_level = not module.startswith(".")
    if top_level and parts and parts[0] in FORBIDDEN:
        return True
    return any(part in TEST_MODULES for part in parts)


def test_it_finds_the_runtime_modules() -> None:
    found = {path.relative_to(ROOT).as_posix() for path in runtime_modules()}
    assert {"chat/relay.py", "chatsite/settings.py", "posts/views.py"} <= found


@pytest.mark.parametrize(
    "path",
    list(runtime_modules()),
    ids=lambda path: path.relative_to(ROOT).as_posix(),
)
def test_a_runtime_module_imports_no_development_code(path: Path) -> None:
    assert [m for m in imported_modules(path) if forbidden(m)] == []


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("emulator", True),
        ("emulator.server", True),
        ("pytest", True),
        ("chat.tests.conftest", True),
        ("..tests", True),
        (".conftest", True),
        ("chat.relay", False),
        ("chat.testing_utils", False),
        (".testing", False),
        ("httpx", False),
    ],
)
def test_forbidden_names_development_code(module: str, expected: bool) -> None:
    assert forbidden(module) is expected
