"""Sign-in from the Container Apps ingress's principal headers (chatsite.easyauth):
users created and kept current, groups and app roles to staff flags, refusals that
are never a 500, and the headers ignored while AUTH_EASY_AUTH is off."""

import base64
import json
import threading
import uuid
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.http import HttpHeaders
from django.test import AsyncClient

from chatsite import easyauth
from testing.easyauth import (
    OBJECT_ID,
    ROLE_TYPE,
    TENANT_ID,
    claims,
    encode,
    principal_headers,
)

pytestmark = pytest.mark.django_db(transaction=True)

STAFF_GROUP = "0f5e6a3b-7c2d-4e1f-8a9b-1c2d3e4f5a6b"
ADMIN_GROUP = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
OTHER_GROUP = "11112222-3333-4444-8555-666677778888"


@pytest.fixture(autouse=True)
def easy_auth(settings) -> None:
    settings.AUTH_EASY_AUTH = True


def browser(headers: dict[str, str] | None = None, **options: bool) -> AsyncClient:
    client = AsyncClient(**options)
    sign_in_as(client, headers or {})
    return client


def sign_in_as(client: AsyncClient, headers: dict[str, str]) -> None:
    """What the ingress does to every later request of a browser that signed in."""
    # Not AsyncClient(headers=...): it files them under WSGI names, which the
    # async client sends as "http-..." headers.
    client.defaults.update(HttpHeaders.to_asgi_names(headers))


async def whoami(client: AsyncClient) -> User | None:
    """The user the request after this one is signed in as, from its session."""
    response = await client.get("/api/conversations")
    assert response.status_code == 200
    session = await client.asession()
    user_id = await session.aget("_auth_user_id")
    return await User.objects.aget(pk=user_id) if user_id else None


async def test_it_creates_the_user_at_the_first_sign_in() -> None:
    object_id = str(uuid.uuid4())
    client = browser(principal_headers(object_id))
    user = await whoami(client)
    assert user is not None
    assert user.username == object_id
    assert (user.first_name, user.last_name) == ("Ada", "Lovelace")
    assert user.get_full_name() == "Ada Lovelace"
    assert user.email == "ada@contoso.example"
    assert not user.has_usable_password()
    assert not user.is_staff and not user.is_superuser
    session = await client.asession()
    assert await session.aget("_auth_user_backend") == easyauth.BACKEND


async def test_it_signs_in_on_the_event_loop(monkeypatch) -> None:
    threads = []
    sign_in = easyauth.sign_in

    async def recording(request: Any) -> easyauth.Principal | None:
        threads.append(threading.get_ident())
        return await sign_in(request)

    monkeypatch.setattr(easyauth, "sign_in", recording)
    await whoami(browser(principal_headers()))
    assert threads == [threading.get_ident()]


async def test_it_finds_the_same_user_by_object_id_after_a_rename() -> None:
    object_id = str(uuid.uuid4())
    first = await whoami(browser(principal_headers(object_id)))
    renamed = principal_headers(
        object_id.upper(),
        email="ada.king@contoso.example",
        name="Ada King",
        given_name=None,
        surname=None,
    )
    second = await whoami(browser(renamed))
    assert second.pk == first.pk
    assert second.email == "ada.king@contoso.example"
    # Without given_name and family_name the display name stands whole.
    assert (second.first_name, second.last_name) == ("Ada King", "")
    assert await User.objects.acount() == 1


async def test_it_keeps_name_and_email_current_within_a_session() -> None:
    object_id = str(uuid.uuid4())
    client = browser(principal_headers(object_id))
    await whoami(client)
    sign_in_as(client, principal_headers(object_id, email="ada@fabrikam.example"))
    user = await whoami(client)
    assert user.email == "ada@fabrikam.example"


async def test_it_writes_the_user_only_when_the_claims_change(monkeypatch) -> None:
    synced = []
    user_for = easyauth.user_for

    async def counting(principal: easyauth.Principal) -> User:
        synced.append(principal.email)
        return await user_for(principal)

    monkeypatch.setattr(easyauth, "user_for", counting)
    object_id = str(uuid.uuid4())
    client = browser(principal_headers(object_id))
    for _ in range(3):
        await whoami(client)
    sign_in_as(client, principal_headers(object_id, email="new@contoso.example"))
    await whoami(client)
    await whoami(client)
    assert synced == ["ada@contoso.example", "new@contoso.example"]


async def test_it_clips_long_claims_to_the_columns() -> None:
    headers = principal_headers(name="x" * 400, given_name=None, surname=None)
    user = await whoami(browser(headers))
    assert user.first_name == "x" * 150


async def test_it_maps_groups_to_staff_and_superuser(settings) -> None:
    # Ids compare whatever their case: the portal and the CLI differ.
    settings.AUTH_EASY_AUTH_STAFF_GROUPS = [STAFF_GROUP.upper()]
    settings.AUTH_EASY_AUTH_SUPERUSER_GROUPS = [ADMIN_GROUP]
    object_id = str(uuid.uuid4())
    client = browser()
    expected = [
        ((OTHER_GROUP,), False, False),
        ((OTHER_GROUP, STAFF_GROUP), True, False),
        ((ADMIN_GROUP,), True, True),
        ((), False, False),
    ]
    for groups, is_staff, is_superuser in expected:
        sign_in_as(client, principal_headers(object_id, groups=groups))
        user = await whoami(client)
        assert (user.is_staff, user.is_superuser) == (is_staff, is_superuser), groups


async def test_it_maps_app_roles_to_staff_and_superuser(settings) -> None:
    settings.AUTH_EASY_AUTH_STAFF_ROLES = ["Chat.Staff"]
    settings.AUTH_EASY_AUTH_SUPERUSER_ROLES = ["Chat.Admin"]
    staff = await whoami(browser(principal_headers(roles=("Chat.Staff",))))
    admin = await whoami(browser(principal_headers(roles=("Chat.Admin",))))
    user = await whoami(browser(principal_headers(roles=("Chat.Reader",))))
    assert (staff.is_staff, staff.is_superuser) == (True, False)
    assert (admin.is_staff, admin.is_superuser) == (True, True)
    assert (user.is_staff, user.is_superuser) == (False, False)


async def test_it_reads_roles_under_the_role_type_the_principal_names() -> None:
    headers = principal_headers()
    payload = json.loads(base64.b64decode(headers["X-MS-CLIENT-PRINCIPAL"]))
    payload["claims"].append({"typ": ROLE_TYPE, "val": "Chat.Admin"})
    headers["X-MS-CLIENT-PRINCIPAL"] = encode(payload)
    principal = easyauth.read_principal(headers)
    assert principal.roles == {"Chat.Admin"}


async def test_it_leaves_staff_flags_to_the_admin_when_none_are_mapped() -> None:
    object_id = str(uuid.uuid4())
    user = await whoami(browser(principal_headers(object_id)))
    await User.objects.filter(pk=user.pk).aupdate(is_staff=True)
    user = await whoami(browser(principal_headers(object_id, email="b@contoso.io")))
    assert user.is_staff
    assert user.email == "b@contoso.io"


async def test_it_signs_out_when_the_ingress_stops_sending_the_principal() -> None:
    client = browser(principal_headers())
    assert await whoami(client) is not None
    client.defaults.clear()  # after /.auth/logout
    assert await whoami(client) is None


async def test_a_password_login_stays_without_a_principal(django_user_model) -> None:
    user = await django_user_model.objects.acreate_user("local", password="x")
    client = browser()
    await client.aforce_login(user)
    assert (await whoami(client)).pk == user.pk


async def test_a_principal_replaces_another_signed_in_user(django_user_model) -> None:
    local = await django_user_model.objects.acreate_user("local", password="x")
    client = browser()
    await client.aforce_login(local)
    object_id = str(uuid.uuid4())
    sign_in_as(client, principal_headers(object_id))
    assert (await whoami(client)).username == object_id


async def test_it_ignores_forged_headers_while_off(settings) -> None:
    settings.AUTH_EASY_AUTH = False
    valid = browser(principal_headers(groups=(ADMIN_GROUP,)))
    garbage = browser({"X-MS-CLIENT-PRINCIPAL": "%%% not base64", **IDP})
    for client in (valid, garbage):
        response = await client.get("/")
        assert response.status_code == 200
        assert b"Signed in as" not in response.content
        assert await whoami(client) is None
        assert (await client.get("/admin/")).status_code == 302
    assert await User.objects.acount() == 0


async def test_turning_it_off_ends_the_sessions_it_made(settings) -> None:
    settings.AUTH_EASY_AUTH_SUPERUSER_GROUPS = [ADMIN_GROUP]
    client = browser(principal_headers(groups=(ADMIN_GROUP,)))
    assert (await client.get("/admin/")).status_code == 200
    settings.AUTH_EASY_AUTH = False
    client.defaults.clear()
    assert (await client.get("/admin/")).status_code == 302
    assert b"Signed in as" not in (await client.get("/")).content


IDP = {"X-MS-CLIENT-PRINCIPAL-IDP": "aad"}
GOOD_CLAIMS = claims(str(uuid.uuid4()))
MALFORMED = {
    "not base64": "eyJhdXRoX3R5cCI6 ImFhZCJ9!",
    "base64url, not base64": base64.urlsafe_b64encode(b'{"a":"~~~?"}').decode(),
    "not JSON": base64.b64encode(b"auth_typ=aad").decode(),
    "not UTF-8": base64.b64encode(b'{"auth_typ": "\xff"}').decode(),
    "a JSON list": encode([{"typ": "oid", "val": "x"}]),
    "no claims": encode({"auth_typ": "aad", "name_typ": "name"}),
    "claims not a list": encode({"auth_typ": "aad", "claims": {"oid": "x"}}),
    "a claim without a value": encode({"auth_typ": "aad", "claims": [{"typ": "x"}]}),
    "a number for a value": encode(
        {"auth_typ": "aad", "claims": [{"typ": "oid", "val": 1}]}
    ),
    "no object id": encode(
        {
            "auth_typ": "aad",
            "claims": [c for c in GOOD_CLAIMS if "objectidentifier" not in c["typ"]],
        }
    ),
    "an object id that is not a GUID": encode(
        {
            "auth_typ": "aad",
            "claims": [{"typ": OBJECT_ID, "val": "x" * 200}],
        }
    ),
    "empty": "",
}


@pytest.mark.parametrize("value", MALFORMED.values(), ids=MALFORMED.keys())
async def test_an_unreadable_principal_is_refused_with_401(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = browser({"X-MS-CLIENT-PRINCIPAL": value, **IDP})
    api = await client.get("/api/conversations")
    assert api.status_code == 401
    assert api["Content-Type"] == "application/json"
    assert api.json()["code"] == "invalid_principal"
    page = await client.get("/")
    assert page.status_code == 401
    assert page["Content-Type"] == "text/html; charset=utf-8"
    assert b'href="/.auth/logout?post_logout_redirect_uri=/"' in page.content
    assert await User.objects.acount() == 0
    refusals = [r for r in caplog.records if r.name == "chatsite.easyauth"]
    assert [r.levelname for r in refusals] == ["WARNING", "WARNING"]
    assert "invalid_principal" in refusals[0].getMessage()
    assert not value or value not in caplog.text


async def test_another_identity_provider_is_refused_with_403() -> None:
    payload = {"auth_typ": "github", "claims": GOOD_CLAIMS}
    client = browser({"X-MS-CLIENT-PRINCIPAL": encode(payload)})
    response = await client.get("/api/conversations")
    assert response.status_code == 403
    assert response.json()["code"] == "identity_provider_refused"


async def test_another_tenant_is_refused_with_403(settings) -> None:
    settings.AUTH_EASY_AUTH_TENANT_ID = TENANT_ID.upper()
    assert await whoami(browser(principal_headers())) is not None
    guest = browser(principal_headers(tenant_id=str(uuid.uuid4())))
    response = await guest.get("/api/conversations")
    assert response.status_code == 403
    assert response.json()["code"] == "tenant_refused"
    page = await guest.get("/")
    assert page.status_code == 403
    assert b"Sign out" in page.content


async def test_a_disabled_account_is_refused_with_403() -> None:
    object_id = str(uuid.uuid4())
    user = await whoami(browser(principal_headers(object_id)))
    await User.objects.filter(pk=user.pk).aupdate(is_active=False)
    response = await browser(principal_headers(object_id)).get("/api/conversations")
    assert response.status_code == 403
    assert response.json()["code"] == "account_disabled"


async def test_signed_in_writes_need_the_csrf_token() -> None:
    # The ingress's cookie goes with every request the browser makes, as the
    # session cookie does: a write is the user's only with the CSRF token.
    client = browser(principal_headers(), enforce_csrf_checks=True)
    response = await client.post(
        "/api/chat", {"message": "hi"}, content_type="application/json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "csrf"
    token = "c" * 32
    client.cookies["csrftoken"] = token
    response = await client.post(
        "/api/chat",
        {"message": "hi", "stream": False},
        content_type="application/json",
        headers={"X-CSRFToken": token},
    )
    assert response.status_code == 200


async def test_mapped_staff_use_the_admin_without_a_password(settings) -> None:
    settings.AUTH_EASY_AUTH_STAFF_GROUPS = [STAFF_GROUP]
    staff = browser(principal_headers(groups=(STAFF_GROUP,)))
    response = await staff.get("/admin/")
    assert response.status_code == 200
    assert b"Site administration" in response.content
    assert b"<strong>Ada</strong>" in response.content

    reader = browser(principal_headers(groups=(OTHER_GROUP,)))
    response = await reader.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


async def test_the_admin_login_offers_the_ingress_sign_in() -> None:
    response = await browser().get("/admin/login/?next=/admin/")
    assert response.status_code == 200
    assert (
        b'href="/.auth/login/aad?post_login_redirect_uri=/admin/login/%3Fnext%3D/admin/"'
        in response.content
    )


async def test_the_admin_logout_ends_the_ingress_sign_in_too(settings) -> None:
    settings.AUTH_EASY_AUTH_SUPERUSER_GROUPS = [ADMIN_GROUP]
    settings.LOGOUT_REDIRECT_URL = settings.AUTH_EASY_AUTH_LOGOUT_URL
    client = browser(principal_headers(groups=(ADMIN_GROUP,)))
    assert (await client.get("/admin/")).status_code == 200
    response = await client.post("/admin/logout/")
    assert response.status_code == 302
    assert response["Location"] == "/.auth/logout?post_logout_redirect_uri=/"
