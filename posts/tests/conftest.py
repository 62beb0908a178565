from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import AsyncClient

from chatsite.models import ApiKey
from posts.models import Post
from posts.tests.callers import Caller

EDITOR_PERMISSIONS = ("add_post", "change_post", "delete_post")


@pytest.fixture(autouse=True)
def _committed_rows(transactional_db: None) -> None:
    # Async views run their queries on another thread's connection, which cannot
    # see rows left uncommitted by the `db` fixture's per-test transaction.
    return None


def make_user(username: str, *permissions: str) -> User:
    user = User.objects.create_user(username)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label="posts", codename__in=permissions
        )
    )
    return user


def make_key(user: User, *, revoked: bool = False) -> str:
    key = ApiKey(user=user, name="tests")
    raw = key.set_new_key()
    key.save()
    if revoked:
        key.revoke()
    return raw


@pytest.fixture
def admin_user() -> User:
    """pytest-django's, without the password: hashing one costs half a second."""
    return User.objects.create_superuser("admin", "admin@example.com", None)


@pytest.fixture
def author() -> User:
    """Writes the posts the tests read; has no permissions."""
    return make_user("author")


@pytest.fixture
def reader() -> User:
    """Logged in, but without any post permission."""
    return make_user("reader")


@pytest.fixture
def editor() -> User:
    return make_user("editor", *EDITOR_PERMISSIONS)


@pytest.fixture
async def editor_session(editor: User) -> AsyncClient:
    """A browser with the editor logged in and CSRF checks on, as in production;
    it has no CSRF token until it loads a page (`csrf_token`)."""
    client = AsyncClient(enforce_csrf_checks=True)
    await client.aforce_login(editor)
    return client


@pytest.fixture
def editor_key(editor: User) -> str:
    return make_key(editor)


@pytest.fixture
def callers(reader: User, editor: User, editor_key: str) -> dict[str, Caller]:
    return {
        "anonymous": Caller(),
        "reader": Caller(user=reader),
        "reader_key": Caller(api_key=make_key(reader)),
        "editor": Caller(user=editor),
        "editor_key": Caller(api_key=editor_key),
        "revoked_key": Caller(api_key=make_key(editor, revoked=True)),
    }


@pytest.fixture
def caller(request: pytest.FixtureRequest, callers: dict[str, Caller]) -> Caller:
    """The caller named by indirect parametrization."""
    return callers[request.param]


@pytest.fixture
def as_editor(callers: dict[str, Caller]) -> Caller:
    """A script with the editor's key: the shortest way to a permitted write."""
    return callers["editor_key"]


@pytest.fixture
def make_post(author: User) -> Callable[..., Awaitable[Post]]:
    """Creates a post, published and by `author` unless told otherwise."""

    async def make(title: str = "Hello", **fields: Any) -> Post:
        fields.setdefault("body", f"Body of {title}")
        fields.setdefault("published", True)
        fields.setdefault("author", author)
        return await Post.objects.acreate(title=title, **fields)

    return make
