"""Chat backends, chosen by `CHAT_BACKEND`: an alias below or a dotted class path."""

import asyncio
import weakref

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from chat.backends.base import ChatBackend

ALIASES = {
    "local": "chat.backends.local.LocalBackend",
    "azure_agents": "chat.backends.azure_agents.AzureAgentsBackend",
    "foundry": "chat.backends.foundry.FoundryBackend",
    "openai": "chat.backends.openai_compat.OpenAIBackend",
}

# One backend (and so one upstream client and credential) per process and event
# loop: aiohttp sessions are bound to the loop that created them.
_instances: (
    "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, ChatBackend]]"
)
_instances = weakref.WeakKeyDictionary()


def backend_path(name: str | None = None) -> str:
    name = name or settings.CHAT_BACKEND
    return ALIASES.get(name, name)


def get_backend(name: str | None = None) -> ChatBackend:
    path = backend_path(name)
    loop = asyncio.get_running_loop()
    per_loop = _instances.setdefault(loop, {})
    backend = per_loop.get(path)
    if backend is None:
        try:
            backend_class = import_string(path)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"CHAT_BACKEND={name or settings.CHAT_BACKEND!r} is neither one of "
                f"{sorted(ALIASES)} nor an importable class path"
            ) from exc
        backend = per_loop[path] = backend_class()
    return backend


async def aclose_all() -> None:
    """Closes the backends created on the running loop (shutdown, test teardown)."""
    per_loop = _instances.pop(asyncio.get_running_loop(), {})
    for backend in per_loop.values():
        await backend.aclose()
