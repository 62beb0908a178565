import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils.http import content_disposition_header

from chat import files, frames, idempotency, lease, limits, relay, store
from chat.backends import get_backend
from chat.backends.base import THREAD_NOT_FOUND, BackendError
from chat.models import Conversation, Message, Owner
from chat.schemas import (
    CURSOR_PATTERN,
    ChatRequest,
    ConversationPatch,
    RegenerateRequest,
)
from chatsite import easyauth
from chatsite.api import (
    BadRequest,
    api_view,
    json_error,
    json_response,
    parse_body,
)
from chatsite.responses import EventStreamResponse

SESSION_OWNER_KEY = "chat_owner"

# HTTP status of the non-streaming fallback, by error code.
JSON_ERROR_STATUS = {"rate_limited": 429, "timeout": 504}

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
# Accept values under which a client takes the stream (axios sends
# "application/json, text/plain, */*" and always got one).
STREAM_TYPES = {"text/event-stream", "*/*", "text/*"}
RETRY_FIELD = b"retry: 2000\n"
EVENT_ID = re.compile(r"[0-9]{1,9}")
BUSY = "a reply is already streaming in this conversation; stop it or wait"
# The conversation list: a page holds at most this many; a search at most this long.
MAX_LIST_LIMIT = 200
MAX_QUERY_CHARS = 200
INTEGER = re.compile(r"[0-9]{1,4}")
CURSOR = re.compile(CURSOR_PATTERN)


async def _owner(request: HttpRequest, *, create: bool) -> Owner:
    user = request.api_user
    if user.is_authenticated:
        return Owner(user_id=user.pk)
    if settings.CHAT_REQUIRE_LOGIN:
        raise BadRequest("sign in to chat", 401, code="login_required")
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        # No cookies: the caller owns what it creates by holding the ids.
        return Owner()
    key = await request.session.aget(SESSION_OWNER_KEY)
    if not key and create:
        key = secrets.token_hex(16)
        await request.session.aset(SESSION_OWNER_KEY, key)
    return Owner(session_key=key or "")


def _wants_json(request: HttpRequest, body: ChatRequest | RegenerateRequest) -> bool:
    """Stream unless the client asks for JSON alone: `"stream": false`, or an
    Accept that names application/json and nothing that takes a stream."""
    if body.stream is not None:
        return not body.stream
    accepted = {
        part.split(";", 1)[0].strip().lower()
        for part in request.headers.get("Accept", "").split(",")
    }
    return "application/json" in accepted and not accepted & STREAM_TYPES


def _ids(body: ChatRequest) -> tuple[uuid.UUID | None, str | None]:
    """The conversation and upstream thread a message continues. A conversation
    id sent as `thread_id` (the earlier service took either) is a conversation."""
    conversation_id, thread_id = body.conversation_id, body.thread_id or None
    as_conversation = _as_uuid(thread_id) if thread_id else None
    if as_conversation is not None and conversation_id in (None, as_conversation):
        return as_conversation, None
    return conversation_id, thread_id


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def post_chat(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    owner = await _owner(request, create=True)
    body = parse_body(request, ChatRequest, text_plain=True)
    caller = limits.caller_of(request, owner)
    conversation_id, thread_id = _ids(body)
    mode = store.NEW if body.edit is None else store.EDIT
    ids: tuple[object, ...] = (body.message, conversation_id, thread_id)
    if body.edit is not None:
        ids += (store.EDIT, body.edit)
    async with idempotency.once(request.headers, caller.key, *ids) as retry:
        if retry.started is not None:
            return await _repeat(request, body, retry.started)
        await limits.check_message_rate(caller)
        reply = await _start(
            owner,
            caller,
            body.message,
            (conversation_id, thread_id),
            started,
            mode=mode,
            edited_id=body.edit,
        )
        await retry.record(reply.conversation_id, reply.message_id)
    if _wants_json(request, body):
        return _json_reply(await reply.collect())
    return _event_stream(reply.sse())


async def post_regenerate(
    request: HttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    """Another reply to the conversation's last message, streamed as a chat
    reply is: a new attempt, stored beside the earlier ones."""
    started = time.perf_counter()
    owner = await _owner(request, create=False)
    # The body may be left out; one that is sent is read with its limits.
    has_body = request.META.get("CONTENT_LENGTH") not in (None, "", "0")
    body = (
        parse_body(request, RegenerateRequest, text_plain=True)
        if has_body
        else RegenerateRequest()
    )
    caller = limits.caller_of(request, owner)
    ids = (store.REGENERATE, conversation_id)
    async with idempotency.once(request.headers, caller.key, *ids) as retry:
        if retry.started is not None:
            return await _repeat(request, body, retry.started)
        await limits.check_message_rate(caller)
        reply = await _start(
            owner, caller, "", (conversation_id, None), started, mode=store.REGENERATE
        )
        await retry.record(reply.conversation_id, reply.message_id)
    if _wants_json(request, body):
        return _json_reply(await reply.collect())
    return _event_stream(reply.sse())


async def _start(
    owner: Owner,
    caller: limits.Caller,
    message: str,
    ids: tuple[uuid.UUID | None, str | None],
    started: float,
    *,
    mode: str = store.NEW,
    edited_id: uuid.UUID | None = None,
) -> relay.Reply:
    conversation_id, thread_id = ids
    try:
        return await relay.start(
            get_backend(),
            owner=owner,
            caller=caller,
            message=message,
            conversation_id=conversation_id,
            thread_id=thread_id,
            started=started,
            mode=mode,
            edited_id=edited_id,
        )
    except store.NotFound:
        raise BadRequest("conversation not found", 404, code="not_found") from None
    except store.Busy:
        raise BadRequest(BUSY, 409, code="conversation_busy") from None
    except store.NotLast:
        problem = (
            "edit must name the last message of one of your conversations"
            if mode == store.EDIT
            else "the conversation has no message to answer again"
        )
        raise BadRequest(problem, 409, code="not_last_message") from None


async def _repeat(
    request: HttpRequest,
    body: ChatRequest | RegenerateRequest,
    started: idempotency.Started,
) -> HttpResponse:
    """A retried POST: the reply its first POST started, attached to while it
    streams (after the client's Last-Event-ID), or as stored once finished."""
    reply: relay.Reply | relay.RemoteReply | None = relay.find(started.conversation_id)
    if reply is None or reply.message_id != started.message_id:
        await relay.turns_stored(conversation_id=started.conversation_id)
        conversation = await Conversation.objects.filter(
            pk=started.conversation_id
        ).afirst()
        if conversation is None:
            raise BadRequest("conversation not found", 404, code="not_found")
        reply = await relay.follow(conversation, get_backend(), started.message_id)
    if reply is not None:
        if _wants_json(request, body):
            return _json_reply(await reply.collect(owner=False))
        return _event_stream(reply.sse(_last_event_id(request), owner=False))
    stored = await relay.stored(
        started.conversation_id, started.message_id, get_backend()
    )
    if stored is None:
        # Streaming on another replica, or lost with a process that died.
        raise BadRequest(BUSY, 409, code="conversation_busy")
    if _wants_json(request, body):
        return _json_reply(stored.body)
    return _event_stream(_frames_body(stored.frames))


def _last_event_id(request: HttpRequest) -> int:
    """The last frame the client has: the `last_event_id` parameter (an id, or
    400), else the `Last-Event-ID` header (anything but one of our ids: none)."""
    value = request.GET.get("last_event_id")
    if value is not None:
        if not EVENT_ID.fullmatch(value):
            raise BadRequest(
                "last_event_id must be a frame id (digits)",
                code="invalid_request",
                fields={"last_event_id": ["must be a frame id (digits)"]},
            )
        return int(value)
    header = request.headers.get("Last-Event-ID", "").strip()
    return int(header) if EVENT_ID.fullmatch(header) else -1


async def _frames_body(replay: list[frames.Frame]) -> AsyncIterator[bytes]:
    for event_id, frame in enumerate(replay):
        yield frames.encode(event_id, frame)


def _json_reply(whole: dict) -> HttpResponse:
    error = whole["error"]
    status = JSON_ERROR_STATUS.get(error["code"], 502) if error else 200
    return json_response(whole, status=status)


def _event_stream(content: AsyncIterator[bytes]) -> EventStreamResponse:
    return EventStreamResponse(content, headers=SSE_HEADERS)


async def _owned_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> Conversation:
    owner = await _owner(request, create=False)
    await relay.turns_stored(conversation_id=conversation_id)
    conversation = await (
        Conversation.objects.owned_by(owner).filter(pk=conversation_id).afirst()
    )
    if conversation is None:
        raise BadRequest("conversation not found", 404, code="not_found")
    return conversation


async def post_stop(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    conversation = await _owned_conversation(request, conversation_id)
    if not await relay.stop(conversation, get_backend()):
        return json_error(
            "nothing is streaming in this conversation", 409, code="not_streaming"
        )
    return json_response(
        {"status": "stopping", "conversation_id": str(conversation.pk)}
    )


def _single(request: HttpRequest, name: str) -> str | None:
    values = request.GET.getlist(name)
    if len(values) > 1:
        raise _bad_parameter(name, "given twice")
    return values[0] if values else None


def _bad_parameter(name: str, problem: str) -> BadRequest:
    return BadRequest(
        "invalid query parameter", code="invalid_request", fields={name: [problem]}
    )


def _limit(request: HttpRequest) -> int:
    raw = _single(request, "limit")
    if raw is None or raw == "":
        return MAX_LIST_LIMIT
    if not INTEGER.fullmatch(raw) or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise _bad_parameter("limit", f"must be an integer from 1 to {MAX_LIST_LIMIT}")
    return int(raw)


def _search(request: HttpRequest) -> str:
    query = (_single(request, "q") or "").strip()
    if "\x00" in query:
        raise _bad_parameter("q", "must not contain NUL characters")
    if len(query) > MAX_QUERY_CHARS:
        raise _bad_parameter("q", f"must be at most {MAX_QUERY_CHARS} characters")
    return query


def _cursor(request: HttpRequest) -> tuple[datetime, uuid.UUID] | None:
    """Where a page starts: after the conversation the last page ended with,
    written `<seconds>.<microseconds>-<id as 32 hex digits>` (CURSOR)."""
    raw = _single(request, "cursor")
    if not raw:
        return None
    match = CURSOR.fullmatch(raw)
    if match is None:
        raise _bad_parameter("cursor", "is not a cursor this list gave")
    seconds, micro, conversation_id = match.groups()
    when = datetime.fromtimestamp(int(seconds), UTC).replace(microsecond=int(micro))
    return when, uuid.UUID(conversation_id)


def _next_cursor(conversation: Conversation) -> str:
    when = conversation.updated_at.astimezone(UTC)
    seconds = int(when.replace(microsecond=0).timestamp())
    return f"{seconds}.{when.microsecond:06d}-{conversation.pk.hex}"


def _page_link(request: HttpRequest, cursor: str) -> str:
    params = request.GET.copy()
    params["cursor"] = cursor
    return f"{request.path}?{urlencode(sorted(params.items()))}"


async def list_conversations(request: HttpRequest) -> HttpResponse:
    """The caller's conversations, newest first, a page (`limit`) at a time
    from `cursor`; with `q`, those whose title or shown messages contain it."""
    limit, query, cursor = _limit(request), _search(request), _cursor(request)
    owner = await _owner(request, create=False)
    if owner.user_id is None and not owner.session_key:
        # Cookie-less callers own conversations by their ids; there is no list.
        return json_response({"results": [], "next": None})
    await relay.turns_stored(owner=owner)
    owned = Conversation.objects.owned_by(owner)
    conversations = owned.order_by("-updated_at", "-id")
    if query:
        # A semi-join the planner may answer from the trigram indexes
        # (PostgreSQL) or conversation by conversation.
        messages = Message.objects.filter(
            conversation__in=owned.values("pk"),
            superseded=False,
            content__icontains=query,
        )
        conversations = conversations.filter(
            Q(title__icontains=query) | Q(pk__in=messages.values("conversation_id"))
        )
    if cursor is not None:
        when, after = cursor
        conversations = conversations.filter(
            Q(updated_at__lt=when) | Q(updated_at=when, id__lt=after)
        )
    page = [c async for c in conversations[: limit + 1]]
    more = len(page) > limit
    page = page[:limit]
    return json_response(
        {
            "results": [c.to_dict() for c in page],
            "next": _page_link(request, _next_cursor(page[-1])) if more else None,
        }
    )


async def get_stream(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """The conversation's reply in flight, or its last one, for a client that
    lost its stream: the frames after its last event id, then live."""
    conversation = await _owned_conversation(request, conversation_id)
    last_id = _last_event_id(request)
    reply = await relay.follow(conversation, get_backend())
    if reply is not None:
        return _event_stream(_retrying(reply.sse(last_id, owner=False)))
    holder = conversation.active_holder
    if conversation.active_since is not None and await lease.alive(holder):
        raise BadRequest(
            "the reply is being written on another server; try again shortly",
            409,
            code="reply_elsewhere",
            headers={"Retry-After": "2"},
        )
    if conversation.active_since is not None and conversation.active_message_id:
        lost = relay.lost(conversation, get_backend())
        return _event_stream(_retrying(_frames_body(lost)))
    stored = await relay.stored(conversation.pk, None, get_backend())
    if stored is None:
        raise BadRequest("this conversation has no reply yet", 404, code="not_found")
    return _event_stream(_retrying(_frames_body(stored.frames)))


async def _retrying(content: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    # EventSource reconnects after this long; no blank line, so no empty event.
    yield RETRY_FIELD
    async for part in content:
        yield part


async def get_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    """The conversation with its messages, as it is shown: without those an edit
    replaced, with every attempt at each reply (`attempt` of `attempts`)."""
    conversation = await _owned_conversation(request, conversation_id)
    body = conversation.to_dict()
    messages = [
        m.to_dict() async for m in conversation.messages.filter(superseded=False)
    ]
    attempts = Counter(m["reply_to"] for m in messages if m["reply_to"])
    seen: Counter[str] = Counter()
    for message in messages:
        if question := message["reply_to"]:
            seen[question] += 1
            message["attempt"], message["attempts"] = seen[question], attempts[question]
    body["messages"] = messages
    return json_response(body)


async def patch_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    """Renames the conversation; its place in the list stays."""
    changes = parse_body(request, ConversationPatch)
    conversation = await _owned_conversation(request, conversation_id)
    await Conversation.objects.filter(pk=conversation.pk).aupdate(title=changes.title)
    conversation.title = changes.title
    return json_response(conversation.to_dict())


async def delete_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = await _owned_conversation(request, conversation_id)
    await relay.discard(conversation, get_backend())
    return HttpResponse(status=204)


async def get_file(
    request: HttpRequest, conversation_id: uuid.UUID, file_id: str
) -> HttpResponse:
    """A file the conversation's agent made, streamed from the agent service."""
    conversation = await _owned_conversation(request, conversation_id)
    kept = await _made_file(conversation, file_id) if len(file_id) <= 200 else None
    backend = get_backend()
    if kept is None or conversation.backend != backend.alias:
        raise BadRequest("file not found", 404, code="not_found")
    content = _bounded(backend.file_content(files.output(kept)))
    try:
        # Upstream's answer first: a failure is still a JSON error.
        first = await anext(content, b"")
    except BackendError as exc:
        status = 404 if exc.code == THREAD_NOT_FOUND else 502
        return json_error(exc.message, status, code=exc.code)
    except files.FileTooLarge as exc:
        return json_error(str(exc), 502, code="file_too_large")
    response = StreamingHttpResponse(
        _after(first, content), content_type=files.content_type(kept)
    )
    # Ids name one content for good; only its owner may see it.
    response["Cache-Control"] = "private, max-age=86400, immutable"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response["Content-Disposition"] = content_disposition_header(
        kept["kind"] != "image", kept.get("name") or file_id
    )
    return response


async def _made_file(conversation: Conversation, file_id: str) -> dict | None:
    """What a reply of the conversation (streaming, or stored) keeps of the file."""
    reply = relay.find(conversation.pk)
    if reply is not None and file_id in reply.files:
        return reply.files[file_id]
    replies = conversation.messages.filter(role=Message.Role.ASSISTANT).only("files")
    async for message in replies:
        for kept in message.files:
            if kept.get("file_id") == file_id:
                return kept
    return None


async def _bounded(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """The file's bytes, broken off past `files.MAX_FILE_BYTES`."""
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > files.MAX_FILE_BYTES:
            await chunks.aclose()
            raise files.FileTooLarge(f"the file is over {files.MAX_FILE_BYTES} bytes")
        yield chunk


async def _after(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk


async def page(request: HttpRequest) -> HttpResponse:
    user = await request.auser()
    if settings.CHAT_REQUIRE_LOGIN and not user.is_authenticated:
        return easyauth.sign_in_redirect(request)
    # The API ties anonymous conversations to this token; creating it here gives
    # the browser its session cookie before the first chat POST. Rendering
    # {{ csrf_token }} sets the CSRF cookie the page's requests send back.
    if not await request.session.aget(SESSION_OWNER_KEY):
        await request.session.aset(SESSION_OWNER_KEY, secrets.token_hex(16))
    backend = get_backend()
    context = {"backend": backend.describe(), "user": user}
    return render(request, "chat/index.html", context)


chat = api_view(POST=post_chat)
stop = api_view(POST=post_stop)
conversations = api_view(GET=list_conversations)
conversation = api_view(
    GET=get_conversation, PATCH=patch_conversation, DELETE=delete_conversation
)
resume = api_view(GET=get_stream)
regenerate = api_view(POST=post_regenerate)
file = api_view(GET=get_file)
