"""Every setting read from the environment is documented in both places."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_database

BASE_DIR = Path(__file__).resolve().parents[2]
ENV_READ = re.compile(
    r'env_(?:str|bool|int|float|list|origins|choice)\(\s*"([A-Z0-9_]+)"'
)


def settings_variables() -> set[str]:
    found = set()
    for path in [BASE_DIR / "chatsite" / "settings.py"]:
        found |= set(ENV_READ.findall(path.read_text()))
    return found


def test_it_reads_a_known_set_of_variables() -> None:
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "CHAT_BACKEND"} <= settings_variables()


def test_every_variable_is_in_env_example() -> None:
    example = (BASE_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))
    assert settings_variables() - documented == set()


def test_every_variable_is_in_the_readme_table() -> None:
    readme = (BASE_DIR / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)`", readme, re.MULTILINE))
    assert settings_variables() - documented == set()
