"""What chat does when someone signs in."""

from typing import Any

from django.contrib.auth.models import User
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest

from chat.models import Conversation, Owner


@receiver(user_logged_in, dispatch_uid="chat.adopt_anonymous_conversations")
async def adopt_anonymous_conversations(
    sender: type[User], request: HttpRequest | None, user: User, **kwargs: Any
) -> None:
    """The conversations this browser started before signing in move to the
    account, whichever way it signed in (the ingress or a Django password). A
    browser that was signed in as someone else keeps nothing: Django gives it a
    fresh session first."""
    from chat import relay
    from chat.views import SESSION_OWNER_KEY

    session = getattr(request, "session", None)
    key = await session.apop(SESSION_OWNER_KEY, None) if session is not None else None
    if key:
        # A conversation whose first words came a moment ago moves too.
        await relay.turns_stored(owner=Owner(session_key=key))
        anonymous = Conversation.objects.owned_by(Owner(session_key=key))
        await anonymous.aupdate(owner=user, owner_key="")
