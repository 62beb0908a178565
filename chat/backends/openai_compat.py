"""Any OpenAI-compatible chat completions endpoint, through the openai package's
async client: Azure OpenAI (its ``/openai/v1`` endpoint, with a key or an Entra
token), OpenAI itself, or a local Ollama, vLLM or llama.cpp server.

Such a service keeps no conversation, so each request carries the stored history
(`needs_history`): the newest turns that fit `OPENAI_HISTORY_CHARS`, after the
optional `OPENAI_SYSTEM_PROMPT`. The thread id is ours (``oa_<hex>``). Stop closes
the stream, which is what ends generation on these servers; `cancel` has nothing
to call. A reply cut short by the token limit (finish_reason "length") or by the
content filter ends with the `incomplete` error, keeping the text that arrived.

The error mapping here serves the foundry backend too: both speak through the
openai client.
"""

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
from azure.core.exceptions import ClientAuthenticationError
from azure.identity.aio import get_bearer_token_provider
from django.conf import settings
from openai import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AsyncOpenAI,
    DefaultAsyncHttpxClient,
)

from chat.backends.azure_agents import (
    RETRY_IN,
    credential,
    is_loopback,
)
from chat.backends.base import (
    INCOMPLETE,
    RATE_LIMITED,
    RUN_FAILED,
    UPSTREAM_AUTH,
    UPSTREAM_DISCONNECTED,
    UPSTREAM_UNAVAILABLE,
    BackendError,
    ChatBackend,
    Completed,
    Delta,
    Event,
    ReplyRequest,
    RunStarted,
    ThreadReady,
)

logger = logging.getLogger(__name__)

AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_HOST_SUFFIXES = (".azure.com", ".azure.us", ".azure.cn")
# The openai client insists on a key; servers without authentication ignore it.
NO_KEY = "none"
SERVICE = "the model server"
SERVER_ERROR_CODES = frozenset(
    {"server_error", "internal_error", "internal_server_error", "service_unavailable"}
)
# Why a reply stopped early, by finish_reason or Responses incomplete reason.
INCOMPLETE_REASONS = {
    "length": "the reply reached the model's output token limit",
    "max_output_tokens": "the reply reached the model's output token limit",
    "content_filter": "the content filter stopped the reply",
}

ApiKey = str | Callable[[], Awaitable[str]]


def is_azure(url: str) -> bool:
    return (urlsplit(url).hostname or "").endswith(AZURE_HOST_SUFFIXES)


def http_client() -> httpx2.AsyncClient:
    """An HTTP pool as large as the other backends' (CHAT_UPSTREAM_MAX_CONNECTIONS)."""
    limit = settings.CHAT_UPSTREAM_MAX_CONNECTIONS
    return DefaultAsyncHttpxClient(
        limits=httpx2.Limits(
            max_connections=limit, max_keepalive_connections=min(limit, 100)
        )
    )


def _retry_after(headers: httpx2.Headers) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return float(headers[name]) * scale
        except (KeyError, ValueError):
            continue
    return None


def api_error(exc: BaseException, service: str = SERVICE) -> BackendError:
    """Turns an openai client exception raised before streaming into a stable
    error; anything else is re-raised."""
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, APIStatusError):
        status = exc.status_code
        if status in (401, 403):
            return BackendError(
                UPSTREAM_AUTH, f"{service} refused our credentials (HTTP {status})"
            )
        if status == 429:
            return BackendError(
                RATE_LIMITED,
                f"{service} is rate limiting requests; try again shortly",
                retry_after=_retry_after(exc.response.headers),
            )
        if status >= 500:
            return BackendError(
                UPSTREAM_UNAVAILABLE, f"{service} failed (HTTP {status})"
            )
        detail = exc.body.get("message") if isinstance(exc.body, dict) else None
        return BackendError(
            RUN_FAILED,
            f"{service} rejected the request (HTTP {status}): {detail or exc.message}",
        )
    if isinstance(exc, APIConnectionError):
        return BackendError(UPSTREAM_UNAVAILABLE, f"could not reach {service}")
    if isinstance(exc, ClientAuthenticationError):
        return BackendError(UPSTREAM_AUTH, f"could not get a token: {exc.message}")
    raise exc


def stream_error(
    code: str | None, message: str | None, *, service: str, default: str
) -> BackendError:
    """An error the service reported inside a stream, by its code."""
    message = message or "no details"
    if code == "rate_limit_exceeded":
        match = RETRY_IN.search(message)
        return BackendError(
            RATE_LIMITED,
            message,
            retry_after=float(match.group(1)) if match else None,
        )
    if code in SERVER_ERROR_CODES:
        default = UPSTREAM_UNAVAILABLE
    return BackendError(default, f"{service} reported an error: {code}: {message}")


def stream_broke(exc: Exception, service: str = SERVICE) -> BackendError:
    """Maps what the openai client raises while iterating a stream."""
    if isinstance(exc, APIConnectionError):
        return BackendError(
            UPSTREAM_DISCONNECTED, f"the connection to {service} was cut"
        )
    if isinstance(exc, APIError):
        # A `{"error": ...}` object in the stream.
        return stream_error(exc.code, exc.message, service=service, default=RUN_FAILED)
    raise exc


def incomplete(reason: str | None) -> BackendError:
    message = INCOMPLETE_REASONS.get(reason or "")
    return BackendError(INCOMPLETE, message or f"the reply stopped early ({reason})")


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
        return {"backend": self.alias, "agent": self.model, "offline": False}

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
                raise BackendError(UPSTREAM_AUTH, "; ".join(problems))
            self._client = AsyncOpenAI(
                base_url=self.base_url,
                api_key=self._api_key(),
                max_retries=settings.CHAT_UPSTREAM_RETRIES,
                http_client=http_client(),
            )
        return self._client

    async def stream_reply(self, request: ReplyRequest) -> AsyncIterator[Event]:
        client = self.client()
        yield ThreadReady(request.thread_id or f"oa_{uuid.uuid4().hex}")
        try:
            stream = await client.chat.completions.create(
                model=self.model,
                messages=history_messages(request),
                stream=True,
                stream_options={"include_usage": True},
            )
        except Exception as exc:
            raise api_error(exc) from exc
        run_id = finish_reason = None
        usage = None
        try:
            async with stream:
                async for chunk in stream:
                    if run_id is None:
                        run_id = chunk.id or f"oa_run_{uuid.uuid4().hex}"
                        yield RunStarted(run_id)
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            yield Delta(choice.delta.content)
                        finish_reason = choice.finish_reason or finish_reason
                    if chunk.usage is not None:
                        usage = {
                            "prompt_tokens": chunk.usage.prompt_tokens,
                            "completion_tokens": chunk.usage.completion_tokens,
                            "total_tokens": chunk.usage.total_tokens,
                        }
        except Exception as exc:
            raise stream_broke(exc) from exc
        if finish_reason is None:
            raise BackendError(INCOMPLETE, "the model's reply ended before it finished")
        if finish_reason in INCOMPLETE_REASONS:
            raise incomplete(finish_reason)
        yield Completed(usage=usage)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._credential is not None:
            await self._credential.close()
        self._client = self._credential = None
