import hashlib
from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import AsyncClient, Client
from django.utils import timezone

from chatsite.models import ApiKey
from testing.admin import filter_links

POST = {"title": "From a script", "body": "Hello"}


@pytest.fixture
def admin_user(db: None) -> User:
    """pytest-django's, without the password: hashing one costs half a second."""
    return User.objects.create_superuser("admin", "admin@example.com", None)


@pytest.fixture
def owner(db: None) -> User:
    user = User.objects.create_user("owner")
    user.user_permissions.set(Permission.objects.filter(codename="add_post"))
    return user


def new_key(user: User, name: str = "laptop") -> tuple[ApiKey, str]:
    key = ApiKey(user=user, name=name)
    raw = key.set_new_key()
    key.save()
    return key, raw


@pytest.fixture
def owner_key(owner: User) -> tuple[ApiKey, str]:
    return new_key(owner)


async def create_post(raw_key: str, scheme: str = "Bearer") -> int:
    response = await AsyncClient().post(
        "/api/posts",
        POST,
        "application/json",
        headers={"Authorization": f"{scheme} {raw_key}"},
    )
    return response.status_code


# --- The model ------------------------------------------------------------------------


def test_it_stores_only_a_hash_of_the_key(owner: User) -> None:
    key, raw = new_key(owner)

    key.refresh_from_db()
    assert raw.startswith("cs_")
    assert len(raw) > 40
    assert key.prefix == raw[:10]
    assert key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {key.name, key.prefix, key.hashed_key}
    assert str(key) == f"laptop ({raw[:10]}…)"
    assert key.is_active


def test_it_makes_a_different_key_each_time(owner: User) -> None:
    keys = {new_key(owner)[1] for _ in range(5)}

    assert len(keys) == 5


def test_it_revokes_a_key_once(owner: User) -> None:
    key, _ = new_key(owner)

    key.revoke()
    revoked_at = key.revoked_at
    key.revoke()

    key.refresh_from_db()
    assert key.revoked_at == revoked_at
    assert not key.is_active
    assert not ApiKey.objects.active().exists()


# --- Authenticating with a key --------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_it_authenticates_a_script(
    owner_key: tuple[ApiKey, str], scheme: str
) -> None:
    assert await create_post(owner_key[1], scheme) == 201


@pytest.mark.django_db(transaction=True)
async def test_it_records_when_a_key_was_last_used(
    owner_key: tuple[ApiKey, str],
) -> None:
    key, raw = owner_key
    before = timezone.now()

    await create_post(raw)

    await key.arefresh_from_db()
    assert key.last_used_at is not None
    assert before <= key.last_used_at <= timezone.now()


@pytest.mark.django_db(transaction=True)
async def test_it_records_last_use_at_most_once_a_minute(
    owner_key: tuple[ApiKey, str],
) -> None:
    key, raw = owner_key
    recent = timezone.now() - timedelta(seconds=30)
    await ApiKey.objects.filter(pk=key.pk).aupdate(last_used_at=recent)

    await create_post(raw)

    await key.arefresh_from_db()
    assert key.last_used_at == recent


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_a_revoked_key(owner_key: tuple[ApiKey, str]) -> None:
    key, raw = owner_key
    await ApiKey.objects.filter(pk=key.pk).aupdate(revoked_at=timezone.now())

    assert await create_post(raw) == 401


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_the_key_of_an_inactive_user(
    owner: User, owner_key: tuple[ApiKey, str]
) -> None:
    await User.objects.filter(pk=owner.pk).aupdate(is_active=False)

    assert await create_post(owner_key[1]) == 401


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("raw", ["cs_unknown", "cs_", "x" * 500, "clé-inconnue"])
async def test_it_refuses_an_unknown_key(raw: str) -> None:
    assert await create_post(raw) == 401


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_a_key_with_its_hash_instead(
    owner_key: tuple[ApiKey, str],
) -> None:
    assert await create_post(owner_key[0].hashed_key) == 401


# --- The management command -----------------------------------------------------------


def run_command(*args: str) -> str:
    out = StringIO()
    call_command("api_key", *args, stdout=out)
    return out.getvalue().strip()


def test_it_creates_a_key_from_the_command_line(owner: User) -> None:
    raw = run_command("owner", "--name", "deploy script")

    key = ApiKey.objects.get()
    assert key.user == owner
    assert key.name == "deploy script"
    assert key.prefix == raw[:10]
    assert key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()


def test_it_names_command_line_keys_cli_by_default(owner: User) -> None:
    run_command("owner")

    assert ApiKey.objects.get().name == "cli"


def test_it_revokes_keys_by_prefix(owner: User) -> None:
    revoked, raw = new_key(owner)
    kept, _ = new_key(owner)

    output = run_command("--revoke", raw[:10])

    assert output == "revoked 1 key(s)"
    revoked.refresh_from_db()
    kept.refresh_from_db()
    assert not revoked.is_active
    assert kept.is_active


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give a username, or --revoke PREFIX"),
        (("nobody",), "no user named 'nobody'"),
        (("--revoke", "cs_missing"), "no active API key with prefix 'cs_missing'"),
    ],
)
def test_it_explains_command_line_mistakes(
    owner: User, args: tuple[str, ...], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        run_command(*args)

    assert not ApiKey.objects.exists()


def test_it_refuses_to_revoke_a_revoked_key_again(owner: User) -> None:
    key, raw = new_key(owner)
    key.revoke()

    with pytest.raises(CommandError, match="no active API key"):
        run_command("--revoke", raw[:10])


# --- The admin ------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?q=laptop", "?q=owner", "?q=cs_"])
def test_it_lists_keys_in_the_admin(
    admin_client: Client, owner_key: tuple[ApiKey, str], query: str
) -> None:
    response = admin_client.get(f"/admin/chatsite/apikey/{query}")

    assert response.status_code == 200
    assert owner_key[1] not in response.text
    assert owner_key[0].hashed_key not in response.text


def test_it_follows_every_admin_filter_link(
    admin_client: Client, owner_key: tuple[ApiKey, str]
) -> None:
    links = filter_links(admin_client, "/admin/chatsite/apikey/")

    for link in links:
        assert admin_client.get(f"/admin/chatsite/apikey/{link}").status_code == 200
    assert len(links) > 5


def test_it_shows_a_new_key_once_when_added_in_the_admin(
    admin_client: Client, owner: User
) -> None:
    form = admin_client.get("/admin/chatsite/apikey/add/")
    assert form.status_code == 200

    response = admin_client.post(
        "/admin/chatsite/apikey/add/",
        {"user": owner.pk, "name": "from the admin"},
        follow=True,
    )

    key = ApiKey.objects.get()
    assert key.user == owner
    (message,) = [
        str(m) for m in response.context["messages"] if "shown once" in str(m)
    ]
    raw = message.removeprefix("New API key (shown once, copy it now): ")
    assert key.prefix == raw[:10]
    assert key.hashed_key == hashlib.sha256(raw.encode()).hexdigest()


def test_it_keeps_the_secret_when_a_key_is_changed_in_the_admin(
    admin_client: Client, owner: User, owner_key: tuple[ApiKey, str]
) -> None:
    key, _ = owner_key
    page = admin_client.get(f"/admin/chatsite/apikey/{key.pk}/change/")
    assert page.status_code == 200

    response = admin_client.post(
        f"/admin/chatsite/apikey/{key.pk}/change/",
        {"user": owner.pk, "name": "renamed"},
    )

    assert response.status_code == 302
    stored = ApiKey.objects.get()
    assert stored.name == "renamed"
    assert stored.hashed_key == key.hashed_key


def test_it_revokes_selected_keys_with_the_admin_action(
    admin_client: Client, owner: User
) -> None:
    first, _ = new_key(owner, "first")
    second, _ = new_key(owner, "second")
    untouched, _ = new_key(owner, "untouched")
    second.revoke()
    revoked_earlier = second.revoked_at

    response = admin_client.post(
        "/admin/chatsite/apikey/",
        {"action": "revoke_keys", "_selected_action": [first.pk, second.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert "Revoked 1 API key(s)." in [str(m) for m in response.context["messages"]]
    first.refresh_from_db()
    second.refresh_from_db()
    untouched.refresh_from_db()
    assert not first.is_active
    assert second.revoked_at == revoked_earlier
    assert untouched.is_active
