"""The emulator as the upstream of each backend that talks to an agent service.

`upstream_settings` is what points a backend at an emulator; tests apply it to
Django's settings in process (`answer_through`) or hand `server_env` to a live
server.
"""

from typing import Any

from pytest_django.fixtures import Settings

from emulator import FOUNDRY_AGENT_NAME, AgentsEmulator, EmulatorThread

UPSTREAM_BACKENDS = ("azure_agents", "foundry", "openai")


def upstream_settings(
    backend: str, emulator: AgentsEmulator | EmulatorThread
) -> dict[str, Any]:
    """Settings for `backend` to answer through `emulator`, without retries."""
    match backend:
        case "azure_agents":
            upstream = {
                "AZURE_AI_PROJECT_ENDPOINT": emulator.endpoint,
                "AZURE_AI_AGENT_ID": emulator.agent_id,
                "AZURE_AI_CREDENTIAL": "dev",
            }
        case "foundry":
            upstream = {
                "AZURE_AI_PROJECT_ENDPOINT": emulator.endpoint,
                "AZURE_AI_AGENT_NAME": FOUNDRY_AGENT_NAME,
                "AZURE_AI_AGENT_VERSION": "",
                "AZURE_AI_CREDENTIAL": "dev",
            }
        case "openai":
            upstream = {
                "OPENAI_BASE_URL": f"{emulator.base_url}/v1",
                "OPENAI_API_KEY": "test-key",
                "OPENAI_MODEL": "emulated-model",
                "OPENAI_SYSTEM_PROMPT": "",
                "OPENAI_HISTORY_CHARS": 32000,
            }
        case _:
            raise ValueError(f"{backend!r} has no upstream to emulate")
    return {"CHAT_BACKEND": backend, "CHAT_UPSTREAM_RETRIES": 0, **upstream}


def answer_through(
    settings: Settings, backend: str, emulator: AgentsEmulator | EmulatorThread
) -> None:
    """Points Django's `settings` (pytest-django's fixture) at `emulator`."""
    for name, value in upstream_settings(backend, emulator).items():
        setattr(settings, name, value)


def server_env(
    backend: str, emulator: AgentsEmulator | EmulatorThread, **extra: str
) -> dict[str, str]:
    """`upstream_settings` as a live server's environment, plus `extra`."""
    settings = upstream_settings(backend, emulator)
    return {name: str(value) for name, value in settings.items()} | extra


def token_text(count: int) -> str:
    """What the first `count` deltas of a `tokens=N` reply spell."""
    return " ".join(f"tok{i}" for i in range(count))
