"""What `docker build` sends: the repository's files less the .dockerignore rules.

The image carries the app only: no emulator, tests, test support, fuzzing or
benchmarks. The context is computed from git (tracked files and untracked ones git
does not ignore) without Docker; patterns are matched the way BuildKit does.
"""

import ast
import subprocess
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest
from docker.utils.build import Pattern
from docker.utils.fnmatch import fnmatchcase

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
LEFT_OUT = ("emulator/", "bench/", "testing/", "tools/")
NEEDED = (
    "manage.py",
    "requirements.txt",
    "chatsite/settings.py",
    "chatsite/asgi.py",
    "chat/relay.py",
    "static/chat/app.js",
    "templates/base.html",
)


class DockerIgnore:
    """.dockerignore patterns, applied as BuildKit applies them.

    Patterns are relative to the context root (`bench` is not `x/bench`); `*` and
    `?` stop at `/`, `**` spans any number of directories; for each path the last
    pattern that matches it or one of its parent directories wins, so a `!pattern`
    re-includes what an earlier one left out. This is moby's
    `MatchesOrParentMatches`; docker-py's own `PatternMatcher.matches` checks one
    parent only and ignores case, and would keep `tests/x.py` under `**/tests`.
    """

    def __init__(self, lines: Iterable[str]) -> None:
        patterns = (Pattern(line) for line in lines if not line.startswith("#"))
        self.patterns = [pattern for pattern in patterns if pattern.dirs]

    @classmethod
    def of(cls, path: Path) -> "DockerIgnore":
        return cls(path.read_text().splitlines())

    def excludes(self, path: str) -> bool:
        parts = path.split("/")
        candidates = [path] + ["/".join(parts[:i]) for i in range(1, len(parts))]
        excluded = False
        for pattern in self.patterns:
            # An exclusion cannot exclude what is out already, nor an exception
            # bring back what is in.
            if pattern.exclusion != excluded:
                continue
            if any(fnmatchcase(c, pattern.cleaned_pattern) for c in candidates):
                excluded = not pattern.exclusion
        return excluded


@cache
def build_context() -> frozenset[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        text=True,
    ).stdout.split("\0")
    rules = DockerIgnore.of(ROOT / ".dockerignore")
    return frozenset(
        path
        for path in listed
        if path and (ROOT / path).is_file() and not rules.excludes(path)
    )


def imports_pytest(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] == "pytest" for name in names):
            return True
    return False


def test_it_leaves_out_the_emulator_tests_bench_and_test_support() -> None:
    context = build_context()
    assert [p for p in context if p.startswith(LEFT_OUT)] == []
    assert [p for p in context if "tests" in p.split("/")[:-1]] == []


def test_no_file_in_it_is_a_test_module_or_imports_pytest() -> None:
    python = [p for p in build_context() if p.endswith(".py")]
    names = [p for p in python if Path(p).name.startswith("test_")]
    assert names + [p for p in python if Path(p).name == "conftest.py"] == []
    pytest_users = [p for p in python if imports_pytest(ROOT / p)]
    assert pytest_users == []


def test_it_holds_what_the_dockerfile_needs() -> None:
    context = build_context()
    assert [path for path in NEEDED if path not in context] == []
    assert any(p.startswith("templates/chat/") for p in context)
    assert any(p.startswith("posts/") and p.endswith(".py") for p in context)


@pytest.mark.parametrize(
    ("patterns", "path", "excluded"),
    [
        # Anchored at the root; a directory covers everything below it.
        (["bench"], "bench/run.py", True),
        (["bench"], "chat/bench/run.py", False),
        (["/bench/"], "bench/run.py", True),
        # `*` stops at a slash, `**` spans zero or more directories.
        (["*.md"], "README.md", True),
        (["*.md"], "docs/deploy.md", False),
        (["**/tests"], "tests/test_x.py", True),
        (["**/tests"], "chat/tests/test_x.py", True),
        (["**/tests"], "a/b/tests/c/test_x.py", True),
        (["**/tests"], "chat/tests.py", False),
        (["**/*.pyc"], "a/b/c.pyc", True),
        (["chat/**/*.py"], "chat/relay.py", True),
        (["chat/**/*.py"], "chatsite/urls.py", False),
        # `!` re-includes; the last matching pattern wins.
        (["bench", "!bench/README.md"], "bench/README.md", False),
        (["bench", "!bench/README.md"], "bench/run.py", True),
        (["*.md", "!README*.md", "README-secret.md"], "README.md", False),
        (["*.md", "!README*.md", "README-secret.md"], "README-secret.md", True),
        (["*.md", "README-secret.md", "!README*.md"], "README-secret.md", False),
        (["!README.md", "*.md"], "README.md", True),
        # Matching is case-sensitive; comments and "." are no patterns.
        (["Bench"], "bench/run.py", False),
        (["# bench", "."], "bench/run.py", False),
    ],
)
def test_the_matcher_follows_docker(
    patterns: list[str], path: str, excluded: bool
) -> None:
    assert DockerIgnore(patterns).excludes(path) is excluded
