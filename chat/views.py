import secrets
import time
import uuid

from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render

from chat import limits, relay, store
from chat.backends import get_backend
from chat.models import Conversation, Owner
from chat.schemas import ChatRequest
from chatsite.api import BadRequest, api_view, json_error, json_response, parse_body

SESSION_OWNER_KEY = "chat_owner"

# HTTP status of the non-streaming fallback, by error code.
JSON_ERROR_STATUS = {"rate_limited": 429, "timeout": 504}

SSE_HEADERS = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
BUSY = "a reply is already streaming in this conversation; stop it or wait"


async def _owner(request: HttpRequest, *, create: bool) -> Owner:
    user = request.api_user
    if user.is_authenticated:
        return Owner(user_id=user.pk)
    if settings.SESSION_COOKIE_NAME not in request.COOKIES:
        # No cookies: the caller owns what it creates by holding the ids.
        return Owner()
    key = await request.session.aget(SESSION_OWNER_KEY)
    if not key and create:
        key = secrets.token_hex(16)
        await request.session.aset(SESSION_OWNER_KEY, key)
    return Owner(session_key=key or "")


def _wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/event-stream" not in accept


async def post_chat(request: HttpRequest) -> HttpResponse:
    started = time.perf_counter()
    if settings.CHAT_REQUIRE_LOGIN and not request.api_user.is_authenticated:
        raise BadRequest("log in to chat", 401, code="login_required")
    body = parse_body(request, ChatRequest)
    await limits.check_message_rate(request)
    try:
        reply = await relay.start(
            get_backend(),
            owner=await _owner(request, create=True),
            caller=limits.caller_key(request),
            message=body.message,
            conversation_id=body.conversation_id,
            thread_id=body.thread_id or None,
            started=started,
        )
    except store.NotFound:
        raise BadRequest("conversation not found", 404, code="not_found") from None
    except store.Busy:
        raise BadRequest(BUSY, 409, code="conversation_busy") from None
    if _wants_json(request):
        whole = await reply.collect()
        error = whole["error"]
        status = JSON_ERROR_STATUS.get(error["code"], 502) if error else 200
        return json_response(whole, status=status)
    return StreamingHttpResponse(
        reply.sse(),
        content_type="text/event-stream; charset=utf-8",
        headers=SSE_HEADERS,
    )


async def _owned_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> Conversation:
    owner = await _owner(request, create=False)
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


async def list_conversations(request: HttpRequest) -> HttpResponse:
    owner = await _owner(request, create=False)
    if owner.user_id is None and not owner.session_key:
        # Cookie-less callers own conversations by their ids; there is no list.
        return json_response({"results": []})
    conversations = Conversation.objects.owned_by(owner)[:200]
    return json_response({"results": [c.to_dict() async for c in conversations]})


async def get_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = await _owned_conversation(request, conversation_id)
    body = conversation.to_dict()
    body["messages"] = [m.to_dict() async for m in conversation.messages.all()]
    return json_response(body)


async def delete_conversation(
    request: HttpRequest, conversation_id: uuid.UUID
) -> HttpResponse:
    conversation = await _owned_conversation(request, conversation_id)
    await relay.discard(conversation, get_backend())
    return HttpResponse(status=204)


async def page(request: HttpRequest) -> HttpResponse:
    # The API ties anonymous conversations to this token; creating it here gives
    # the browser its session cookie before the first chat POST. Rendering
    # {{ csrf_token }} sets the CSRF cookie the page's requests send back.
    if not await request.session.aget(SESSION_OWNER_KEY):
        await request.session.aset(SESSION_OWNER_KEY, secrets.token_hex(16))
    backend = get_backend()
    return render(request, "chat/index.html", {"backend": backend.describe()})


chat = api_view(POST=post_chat)
stop = api_view(POST=post_stop)
conversations = api_view(GET=list_conversations)
conversation = api_view(GET=get_conversation, DELETE=delete_conversation)
