"""Any OpenAI-compatible chat completions endpoint, through the openai package's
async client: Azure OpenAI (its ``/openai/v1`` endpoint, with a key or an Entra
token), OpenAI itself, or a local Ollama, vLLM or llama.cpp server.

Such a service keeps no conversation, so each request carries the stored history
(`needs_history`): the newest turns that fit `OPENAI_HISTORY_CHARS`, after the
optional `OPENAI_SYSTEM_PROMPT`. The thread id is ours (``oa_<hex>``). Stop closes
the stream, which is what ends generation on these servers; `cancel` has nothing
to call. A reply cut short by the token limit (finish_reason "length") or by the
content filter ends with the `incomplete` error, keeping the text that arrived.
"""

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from azure.identity.aio import get_bearer_token_provider
from django.conf import settings
from openai import AsyncOpenAI

from chat.backends import base
from chat.backends._azure import credential, is_loopback
from chat.backends._errors import INCOMPLETE_REASONS, incomplete
from chat.backends._openai import api_error, http_client, stream_broke
from chat.backends.base import BackendError, ChatBackend, Event, ReplyRequest

logger = logging.getLogger(__name__)

AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_HOST_SUFFIXES = (".azure.com", ".azure.us", ".azure.cn")
# The openai client insists on a key; servers without authentication ignore it.
NO_KEY = "none"
SERVICE = "the model server"

ApiKey = str | Callable[[], Awaitable[str]]


def is_azure(url: str) -> bool:
    return (urlsplit(url).hostname or "").endswith(AZURE_HOST_SUFFIXES)


def history_messages(request: ReplyRequest) -> list[dict[str, str]]:
    """The request as chat messages: the system prompt, the newest past turns
    that fit OPENAI_HISTORY_CHARS with the new message, then the new message."""
    budget = settings.OPENAI_HISTORY_CHARS - len(request.message)
    kept = []
    for turn in reversed(request.history):
        if not turn.content:
            continue  # a reply that failed before any text
        budget -= len(turn.content)
        if budget < 0:
            break
        kept.append({"role": turn.role, "content": turn.content})
    kept.reverse()
    # Chat templates expect the user to speak first.
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    if settings.OPENAI_SYSTEM_PROMPT:
        kept.insert(0, {"role": "system", "content": settings.OPENAI_SYSTEM_PROMPT})
    kept.append({"role": "user", "content": request.message})
    return kept


class OpenAIBackend(ChatBackend):
    alias = "openai"
    label = "OpenAI-compatible model"
    needs_history = True

    def __init__(self) -> None:
        self.base_url = settings.OPENAI_BASE_URL.rstrip("/")
        self.model = settings.OPENAI_MODEL
        self._client: AsyncOpenAI | None = None
        self._credential: Any = None

    def _uses_entra(self) -> bool:
        """No key: an Azure endpoint gets an Entra token (the dev one for the
        loopback emulator with AZURE_AI_CREDENTIAL=dev)."""
        if settings.OPENAI_API_KEY:
            return False
        dev = settings.AZURE_AI_CREDENTIAL == "dev"
        return is_azure(self.base_url) or (dev and is_loopback(self.base_url))

    def configuration_problems(self) -> list[str]:
        problems = []
        if not self.model:
            problems.append("set OPENAI_MODEL (the model or Azure deployment name)")
        url = self.base_url
        if not url:
            problems.append(
                "set OPENAI_BASE_URL, e.g. https://<resource>.openai.azure.com/openai/v1"
                " or http://127.0.0.1:11434/v1"
            )
            return problems
        if urlsplit(url).scheme not in ("http", "https"):
            problems.append("OPENAI_BASE_URL must be an http(s) URL")
        sends_secret = bool(settings.OPENAI_API_KEY) or self._uses_entra()
        if url.startswith("http://") and not is_loopback(url) and sends_secret:
            problems.append("OPENAI_BASE_URL must use https to send a key or token")
        dev = settings.AZURE_AI_CREDENTIAL == "dev"
        if self._uses_entra() and dev and not is_loopback(url):
            problems.append(
                "AZURE_AI_CREDENTIAL=dev is only accepted for a loopback endpoint"
            )
        return problems

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"agent": self.model}

    def _api_key(self) -> ApiKey:
        if settings.OPENAI_API_KEY:
            return settings.OPENAI_API_KEY
        if not self._uses_entra():
            return NO_KEY
        self._credential = credential()
        return get_bearer_token_provider(self._credential, AZURE_OPENAI_SCOPE)

    def client(self) -> AsyncOpenAI:
        if self._client is None:
            problems = self.configuration_problems()
            if problems:
                raise BackendError(base.UPSTREAM_AUTH, "; ".join(problems))
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key(),
                max_retries=settings.CHAT_UPSTREAM_RETRIES,
                http_client=http_client(),
            )
        return self._client

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        client = self.client()
        yield base.ThreadReady(request.thread_id or f"oa_{uuid.uuid4().hex}")
        try:
            stream = await client.chat.completions.create(
                model=self.model,
                messages=history_messages(request),
                stream=True,
                stream_options={"include_usage": True},
            )
        except Exception as exc:
            raise api_error(exc, SERVICE) from exc
        run_id = finish_reason = None
        usage = None
        try:
            async with stream:
                async for chunk in stream:
                    if run_id is None:
                        run_id = chunk.id or f"oa_run_{uuid.uuid4().hex}"
                        yield base.RunStarted(run_id)
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            yield base.Delta(choice.delta.content)
                        finish_reason = choice.finish_reason or finish_reason
                    if chunk.usage is not None:
                        usage = {
                            "prompt_tokens": chunk.usage.prompt_tokens,
                            "completion_tokens": chunk.usage.completion_tokens,
                            "total_tokens": chunk.usage.total_tokens,
                        }
        except Exception as exc:
            raise stream_broke(exc, SERVICE) from exc
        if finish_reason is None:
            raise BackendError(
                base.INCOMPLETE, "the model's reply ended before it finished"
            )
        if finish_reason in INCOMPLETE_REASONS:
            raise incomplete(finish_reason)
        yield base.Completed(usage=usage)

    async def aclose(self) -> None:
        await base.close_each(self._client, self._credential)
        self._client = self._credential = None
