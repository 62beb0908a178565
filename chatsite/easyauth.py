"""Sign-in through Container Apps authentication ("Easy Auth") with Microsoft Entra ID.

With AUTH_EASY_AUTH on, the Container Apps ingress signs users in and passes each
request's principal to the app in headers it sets itself, replacing any a client
sent:

    X-MS-CLIENT-PRINCIPAL      base64 of {"auth_typ": "aad", "claims": [{"typ",
                               "val"}, ...], "name_typ", "role_typ"}
    X-MS-CLIENT-PRINCIPAL-ID   the principal's object id
    X-MS-CLIENT-PRINCIPAL-NAME its name (the claim that name_typ names)
    X-MS-CLIENT-PRINCIPAL-IDP  the identity provider, "aad"

The claims header is the one read: it carries everything the others do. On every
request `sign_in` keeps the Django session in step with it: a principal signs in
its user (created on first sign-in, keyed by the object id, with names, email and
staff flags following the claims); no principal signs out a user it signed in,
after `/.auth/logout`. Users who log in with a Django password are left alone.

The headers prove nothing by themselves: they are trusted only because the ingress
is the only way to reach the container. With the setting off they are ignored.
"""

import base64
import binascii
import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from pydantic import BaseModel, ConfigDict, ValidationError

from chatsite.api import json_error

logger = logging.getLogger(__name__)

PRINCIPAL_HEADER = "X-MS-CLIENT-PRINCIPAL"
IDENTITY_PROVIDER = "aad"
BACKEND = "chatsite.easyauth.EasyAuthBackend"
# What the session's user was last brought up to date with (see `sign_in`).
SYNCED_SESSION_KEY = "easy_auth_synced"

# Claim types as Easy Auth maps them from the ID token, then the token's own names.
OBJECT_ID = ("http://schemas.microsoft.com/identity/claims/objectidentifier", "oid")
TENANT_ID = ("http://schemas.microsoft.com/identity/claims/tenantid", "tid")
EMAIL = ("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress", "email")
GIVEN_NAME = (
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
    "given_name",
)
SURNAME = (
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
    "family_name",
)
NAME = ("name",)
USERNAME = ("preferred_username",)
GROUPS = ("groups",)
ROLES = ("roles", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")


class Claim(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)

    typ: str
    val: str


class ClientPrincipal(BaseModel):
    """The decoded X-MS-CLIENT-PRINCIPAL header. Fields Easy Auth may add are
    ignored; a missing or mistyped one makes the header unreadable."""

    model_config = ConfigDict(strict=True, frozen=True)

    auth_typ: str
    claims: list[Claim]
    name_typ: str = ""
    role_typ: str = ""

    def values(self, types: Iterable[str]) -> list[str]:
        wanted = set(types)
        return [claim.val for claim in self.claims if claim.typ in wanted]

    def first(self, types: Iterable[str]) -> str:
        return next(iter(self.values(types)), "").strip()


class SignInRefused(Exception):
    """The request's principal cannot sign in: 401 when its headers cannot be read,
    403 when they can but the account is not let in."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Principal:
    """Who the ingress signed in, as far as this app cares."""

    object_id: str
    tenant_id: str
    first_name: str
    last_name: str
    email: str
    groups: frozenset[str]
    roles: frozenset[str]


def read_principal(headers: Any) -> Principal | None:
    """The principal in the request headers, None when there is none, or
    SignInRefused(401) when the header is not what Container Apps sends."""
    encoded = headers.get(PRINCIPAL_HEADER)
    if encoded is None:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        principal = ClientPrincipal.model_validate_json(decoded)
    except (binascii.Error, ValidationError):
        raise SignInRefused(
            f"{PRINCIPAL_HEADER} is not base64-encoded JSON with a claims list",
            401,
            "invalid_principal",
        ) from None
    if principal.auth_typ.lower() != IDENTITY_PROVIDER:
        raise SignInRefused(
            f"sign-in through {principal.auth_typ!r} is not accepted here",
            403,
            "identity_provider_refused",
        )
    try:
        # Entra object ids are GUIDs; the username column takes nothing longer.
        object_id = str(uuid.UUID(principal.first(OBJECT_ID)))
    except ValueError:
        raise SignInRefused(
            "the sign-in carries no object id claim", 401, "invalid_principal"
        ) from None
    given, surname = principal.first(GIVEN_NAME), principal.first(SURNAME)
    username = principal.first(USERNAME)
    return Principal(
        object_id=object_id,
        tenant_id=principal.first(TENANT_ID).lower(),
        # The display name stands whole in first_name when the token does not
        # split it: Django joins the two for get_full_name().
        first_name=given if given or surname else principal.first(NAME),
        last_name=surname,
        email=principal.first(EMAIL) or (username if "@" in username else ""),
        groups=frozenset(v.strip().lower() for v in principal.values(GROUPS)),
        roles=frozenset(principal.values({*ROLES, principal.role_typ} - {""})),
    )


def account_fields(principal: Principal) -> dict[str, Any]:
    """The user's fields as the principal's claims have them, clipped to the
    columns' lengths. The staff flags are there only when groups or app roles are
    mapped to them; otherwise they stay as the admin sets them."""
    fields: dict[str, Any] = {
        name: getattr(principal, name)[: User._meta.get_field(name).max_length]
        for name in ("first_name", "last_name", "email")
    }
    staff = _ids(settings.AUTH_EASY_AUTH_STAFF_GROUPS)
    superuser = _ids(settings.AUTH_EASY_AUTH_SUPERUSER_GROUPS)
    staff_roles = set(settings.AUTH_EASY_AUTH_STAFF_ROLES)
    superuser_roles = set(settings.AUTH_EASY_AUTH_SUPERUSER_ROLES)
    if staff or superuser or staff_roles or superuser_roles:
        is_superuser = bool(
            principal.groups & superuser or principal.roles & superuser_roles
        )
        fields["is_superuser"] = is_superuser
        fields["is_staff"] = is_superuser or bool(
            principal.groups & staff or principal.roles & staff_roles
        )
    return fields


def _ids(values: Iterable[str]) -> set[str]:
    # Entra object ids are GUIDs; the portal and the CLI print them in either case.
    return {value.lower() for value in values}


async def user_for(principal: Principal) -> User:
    """The principal's user, created on its first sign-in (with no usable
    password) and brought up to date with its claims."""
    fields = account_fields(principal)
    user, created = await User.objects.aget_or_create(
        username=principal.object_id,
        defaults={**fields, "password": make_password(None)},
    )
    changed = [name for name, value in fields.items() if getattr(user, name) != value]
    if changed and not created:
        for name in changed:
            setattr(user, name, fields[name])
        await user.asave(update_fields=changed)
    return user


class EasyAuthBackend(ModelBackend):
    """Authenticates the principal the ingress signed in (`principal=`), never a
    password. With AUTH_EASY_AUTH off it authenticates nobody and restores no
    session it made, so turning the setting off signs those users out."""

    def authenticate(self, request: HttpRequest | None, **credentials: Any) -> None:
        # Principals are read on the event loop only (`sign_in`).
        return None

    async def aauthenticate(
        self,
        request: HttpRequest | None,
        principal: Principal | None = None,
        **credentials: Any,
    ) -> User | None:
        if principal is None or not settings.AUTH_EASY_AUTH:
            return None
        user = await user_for(principal)
        return user if self.user_can_authenticate(user) else None

    def get_user(self, user_id: Any) -> User | None:
        return super().get_user(user_id) if settings.AUTH_EASY_AUTH else None

    async def aget_user(self, user_id: Any) -> User | None:
        return await super().aget_user(user_id) if settings.AUTH_EASY_AUTH else None


async def sign_in(request: HttpRequest) -> Principal | None:
    """Brings the request's Django login in step with the ingress's principal and
    returns that principal (None: anonymous as far as the ingress knows).

    The user row is written only when the claims say something new: the session
    remembers what its user was last synced with.
    """
    principal = read_principal(request.headers)
    if principal is None:
        if await request.session.aget(auth.BACKEND_SESSION_KEY) == BACKEND:
            await auth.alogout(request)
        return None
    tenant = settings.AUTH_EASY_AUTH_TENANT_ID.lower()
    if tenant and principal.tenant_id != tenant:
        raise SignInRefused(
            "accounts of this organisation cannot sign in here",
            403,
            "tenant_refused",
        )
    synced = _fingerprint(principal)
    user = await request.auser()
    if not (
        user.is_authenticated
        and user.get_username() == principal.object_id
        and await request.session.aget(SYNCED_SESSION_KEY) == synced
    ):
        signed_in = await auth.aauthenticate(request, principal=principal)
        if signed_in is None:
            raise SignInRefused("this account is disabled", 403, "account_disabled")
        if signed_in.pk != user.pk:
            await auth.alogin(request, signed_in, backend=BACKEND)
        await request.session.aset(SYNCED_SESSION_KEY, synced)
        user = signed_in
    # Loaded once, for sync code too (the admin, templates): request.user would
    # otherwise load it again, and cannot from the event loop.
    request.user = user
    return principal


def _fingerprint(principal: Principal) -> str:
    state = [principal.object_id, account_fields(principal)]
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()


def refusal(request: HttpRequest, refused: SignInRefused) -> HttpResponse:
    """JSON under /api/; elsewhere a page that offers to sign out (sending the
    browser back to sign in could loop on the same principal)."""
    # The reason only: the header holds the user's claims.
    logger.warning("sign-in refused (%s): %s", refused.code, refused.message)
    if request.path.startswith("/api/"):
        return json_error(refused.message, refused.status, code=refused.code)
    context = {"message": refused.message, "sign_out_url": sign_out_url()}
    return render(request, "sign_in_refused.html", context, status=refused.status)


def sign_in_url(next_path: str) -> str:
    return (
        f"{settings.AUTH_EASY_AUTH_LOGIN_URL}"
        f"?post_login_redirect_uri={quote(next_path, safe='/')}"
    )


def sign_out_url() -> str:
    return settings.AUTH_EASY_AUTH_LOGOUT_URL


def sign_in_redirect(request: HttpRequest) -> HttpResponseRedirect:
    """To the ingress's sign-in with AUTH_EASY_AUTH, else to Django's login page;
    either way back to this page afterwards."""
    if settings.AUTH_EASY_AUTH:
        return HttpResponseRedirect(sign_in_url(request.get_full_path()))
    return redirect_to_login(request.get_full_path())


def links(request: HttpRequest) -> dict[str, Any]:
    """Template context: where to sign in and out through the ingress."""
    if not settings.AUTH_EASY_AUTH:
        return {}
    return {
        "easy_auth": {
            "sign_in_url": sign_in_url(request.get_full_path()),
            "sign_out_url": sign_out_url(),
        }
    }
