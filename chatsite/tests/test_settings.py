import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured

from chatsite.settings import (
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_list,
    env_origins,
    env_str,
)

BASE_DIR = Path(__file__).resolve().parents[2]
PRINT_SETTINGS = (
    "import json, sys\n"
    "from django.conf import settings\n"
    "print(json.dumps({name: getattr(settings, name) for name in sys.argv[1:]},"
    " default=str))"
)
# Variables the test run itself sets, removed so each case starts from nothing.
CLEARED = ("DJANGO_", "API_", "DATABASE_URL", "REDIS_URL", "CSRF_", "CORS_", "LOG_")


def load_settings(env: dict[str, str], *names: str) -> subprocess.CompletedProcess:
    """Imports chatsite.settings in a fresh interpreter with exactly `env` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED)}
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS, *names],
        cwd=BASE_DIR,
        env={**clean, "DJANGO_SETTINGS_MODULE": "chatsite.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_from(env: dict[str, str], *names: str) -> dict[str, Any]:
    result = load_settings(env, *names)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


SECRET = {"DJANGO_SECRET_KEY": "a-test-secret-key-that-is-long-enough-0123456789"}


# --- The helpers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        *[("1", True), ("true", True), (" Yes ", True), ("ON", True)],
        *[("0", False), ("false", False), ("no", False), ("off", False), ("", False)],
    ],
)
def test_it_reads_booleans(monkeypatch, raw: str, expected: bool) -> None:
    monkeypatch.setenv("FLAG", raw)

    assert env_bool("FLAG", not expected) is expected


def test_it_defaults_missing_variables(monkeypatch) -> None:
    monkeypatch.delenv("MISSING", raising=False)

    assert env_bool("MISSING", True) is True
    assert env_int("MISSING", 7) == 7
    assert env_float("MISSING", 0.5) == 0.5
    assert env_str("MISSING", "x") == "x"
    assert env_list("MISSING", ["a"]) == ["a"]
    assert env_origins("MISSING") == []
    assert env_choice("MISSING", "b", ("a", "b")) == "b"


def test_it_reads_numbers_lists_and_origins(monkeypatch) -> None:
    monkeypatch.setenv("NUMBER", " 42 ")
    monkeypatch.setenv("LIST", " a, b ,,c ")
    monkeypatch.setenv("ORIGINS", "https://example.com, http://localhost:8000")

    assert env_int("NUMBER", 0) == 42
    assert env_float("NUMBER", 0.0) == 42.0
    assert env_list("LIST") == ["a", "b", "c"]
    assert env_origins("ORIGINS") == ["https://example.com", "http://localhost:8000"]


@pytest.mark.parametrize(
    ("helper", "raw", "message"),
    [
        (lambda: env_bool("VALUE"), "maybe", "VALUE must be a boolean"),
        (lambda: env_bool("VALUE"), "2", "VALUE must be a boolean"),
        (lambda: env_int("VALUE", 1), "ten", "VALUE must be an integer"),
        (lambda: env_int("VALUE", 1), "1.5", "VALUE must be an integer"),
        (lambda: env_int("VALUE", 1), "-1", "VALUE must be >= 0"),
        (lambda: env_int("VALUE", 1, minimum=1024), "1023", "VALUE must be >= 1024"),
        (lambda: env_float("VALUE", 1.0), "fast", "VALUE must be a number"),
        (lambda: env_float("VALUE", 1.0, minimum=0.1), "0.01", "VALUE must be >="),
        (lambda: env_origins("VALUE"), "example.com", "VALUE entries must look"),
        (lambda: env_origins("VALUE"), "ftp://example.com", "VALUE entries must"),
        (lambda: env_origins("VALUE"), "https://example.com/", "VALUE entries must"),
        (lambda: env_choice("VALUE", "a", ("a", "b")), "c", "VALUE must be one of"),
    ],
)
def test_it_rejects_malformed_values(monkeypatch, helper, raw: str, message) -> None:
    monkeypatch.setenv("VALUE", raw)

    with pytest.raises(ImproperlyConfigured, match=message):
        helper()


# --- The settings module --------------------------------------------------------------


def test_it_requires_a_secret_key_when_debug_is_off() -> None:
    result = load_settings({"DJANGO_DEBUG": "0"}, "SECRET_KEY")

    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off" in result.stderr


def test_it_uses_the_secret_key_from_the_environment() -> None:
    loaded = settings_from({**SECRET, "DJANGO_DEBUG": "0"}, "SECRET_KEY", "DEBUG")

    assert loaded == {"SECRET_KEY": SECRET["DJANGO_SECRET_KEY"], "DEBUG": False}


def test_it_keeps_a_development_key_when_debug_is_on() -> None:
    loaded = settings_from({"DJANGO_DEBUG": "1"}, "SECRET_KEY", "DEBUG")

    assert loaded["DEBUG"] is True
    assert len(loaded["SECRET_KEY"]) >= 50


def test_it_is_secure_by_default() -> None:
    loaded = settings_from(
        SECRET, "DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"
    )

    assert loaded == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
    }


def test_it_limits_request_bodies_from_api_max_body_bytes() -> None:
    default = settings_from(SECRET, "DATA_UPLOAD_MAX_MEMORY_SIZE")
    custom = settings_from(
        {**SECRET, "API_MAX_BODY_BYTES": "2048"}, "DATA_UPLOAD_MAX_MEMORY_SIZE"
    )

    assert default["DATA_UPLOAD_MAX_MEMORY_SIZE"] == 1024 * 1024
    assert custom["DATA_UPLOAD_MAX_MEMORY_SIZE"] == 2048


def test_it_uses_redis_for_the_cache_when_configured() -> None:
    url = "redis://127.0.0.1:6379/3"
    loaded = settings_from({**SECRET, "REDIS_URL": url}, "CACHES")

    assert loaded["CACHES"]["default"]["BACKEND"].endswith("RedisCache")
    assert loaded["CACHES"]["default"]["LOCATION"] == url


@pytest.mark.parametrize(
    ("env", "min_size", "max_size"),
    [
        ({}, 8, 20),  # a connection for each of the 8 threads that use them
        ({"DJANGO_SYNC_THREADS": "3"}, 3, 20),
        ({"DB_POOL_MAX_SIZE": "4"}, 4, 4),  # infra/ deploys 4
        ({"DB_POOL_MIN_SIZE": "1"}, 1, 20),
    ],
)
def test_the_postgresql_pool_keeps_a_connection_for_each_sync_thread(
    env: dict[str, str], min_size: int, max_size: int
) -> None:
    url = {"DATABASE_URL": "postgres://u@h/db"}
    loaded = settings_from({**SECRET, **url, **env}, "DATABASES")
    pool = loaded["DATABASES"]["default"]["OPTIONS"]["pool"]
    assert (pool["min_size"], pool["max_size"]) == (min_size, max_size)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_DEBUG": "sometimes"}, "DJANGO_DEBUG must be a boolean"),
        ({"API_MAX_BODY_BYTES": "100"}, "API_MAX_BODY_BYTES must be >= 1024"),
        ({"API_MAX_BODY_BYTES": "1MB"}, "API_MAX_BODY_BYTES must be an integer"),
        ({"DATABASE_URL": "nosuchdb://x/y"}, "DATABASE_URL is not a valid"),
        (
            {"DATABASE_URL": "postgres://u@h/db", "DB_POOL_MAX_SIZE": "0"},
            "DB_POOL_MAX_SIZE must be >= 1",
        ),
        ({"CSRF_TRUSTED_ORIGINS": "example.com"}, "CSRF_TRUSTED_ORIGINS entries"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL must be one of"),
        ({"CHAT_KEEPALIVE_SECONDS": "0"}, "CHAT_KEEPALIVE_SECONDS must be >="),
    ],
)
def test_it_refuses_to_start_with_malformed_values(
    env: dict[str, str], message: str
) -> None:
    result = load_settings({**SECRET, **env}, "DEBUG")

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr
