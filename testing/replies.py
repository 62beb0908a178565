"""The assistant's message a reply stored, as tests look it up."""

from uuid import UUID

from django.db.models import QuerySet

from chat.models import Message
from testing.waiting import await_until, wait_until


def _replies(conversation_id: UUID | str | None) -> QuerySet[Message]:
    replies = Message.objects.filter(role=Message.Role.ASSISTANT)
    if conversation_id is not None:
        replies = replies.filter(conversation_id=conversation_id)
    return replies


def stored_reply(conversation_id: UUID | str | None = None) -> Message:
    """The reply of `conversation_id` (or the only reply), once a server has
    stored it: a live server stores a reply as it ends, which can be after the
    client has read the last frame or left."""
    wait_until(_replies(conversation_id).exists)
    return _replies(conversation_id).get()


async def astored_reply(conversation_id: UUID | str | None = None) -> Message:
    """`stored_reply` for async tests."""
    await await_until(_replies(conversation_id).aexists)
    return await _replies(conversation_id).aget()
