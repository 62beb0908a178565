from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient

from posts.models import Post
from posts.tests.callers import Caller

MakePost = Callable[..., Awaitable[Post]]


@pytest.fixture
async def five_posts(make_post: MakePost) -> None:
    """Posts 1 to 5, created in that order: lists show Post 5 first."""
    for number in range(1, 6):
        await make_post(f"Post {number}")


def titles(response) -> list[str]:
    return [post["title"] for post in response.json()["results"]]


def query(link: str) -> dict[str, list[str]]:
    parts = urlsplit(link)
    assert parts.path == "/api/posts"
    return parse_qs(parts.query)


async def test_it_lists_published_posts_newest_first(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    first, second = await make_post("First"), await make_post("Second")

    response = await async_client.get("/api/posts")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["count"] == 2
    assert body["limit"] == 20
    assert body["offset"] == 0
    assert body["next"] is None
    assert body["previous"] is None
    assert body["results"] == [second.to_dict(), first.to_dict()]


@pytest.mark.parametrize("path", ["/api/posts", "/api/posts/"])
async def test_it_accepts_a_trailing_slash_or_not(
    async_client: AsyncClient, make_post: MakePost, path: str
) -> None:
    await make_post()

    response = await async_client.get(path)

    assert response.status_code == 200
    assert response.json()["count"] == 1


async def test_it_answers_an_empty_page_when_there_are_no_posts(
    async_client: AsyncClient,
) -> None:
    response = await async_client.get("/api/posts")

    assert response.json()["count"] == 0
    assert response.json()["results"] == []


async def test_it_hides_drafts_from_anonymous_callers(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    await make_post("Public")
    await make_post("Draft", published=False)

    response = await async_client.get("/api/posts")

    assert titles(response) == ["Public"]
    assert response.json()["count"] == 1


async def test_it_shows_drafts_to_their_author_only(
    callers: dict[str, Caller], make_post: MakePost, reader: User
) -> None:
    await make_post("Public")
    await make_post("Someone else's draft", published=False)
    await make_post("My draft", published=False, author=reader)

    response = await callers["reader"].send("GET", "/api/posts")

    assert titles(response) == ["My draft", "Public"]


@pytest.mark.parametrize("caller", ["editor", "editor_key"], indirect=True)
async def test_it_shows_every_draft_to_editors(
    caller: Caller, make_post: MakePost
) -> None:
    await make_post("Public")
    await make_post("Draft", published=False)

    response = await caller.send("GET", "/api/posts")

    assert titles(response) == ["Draft", "Public"]


async def test_it_refuses_a_revoked_key_even_for_reads(
    callers: dict[str, Caller], make_post: MakePost
) -> None:
    await make_post()

    response = await callers["revoked_key"].send("GET", "/api/posts")

    assert response.status_code == 401
    assert response.json() == {"error": "invalid or revoked API key"}


@pytest.mark.usefixtures("five_posts")
async def test_it_pages_with_limit_and_offset(async_client: AsyncClient) -> None:
    response = await async_client.get("/api/posts", {"limit": 2, "offset": 2})

    body = response.json()
    assert titles(response) == ["Post 3", "Post 2"]
    assert (body["count"], body["limit"], body["offset"]) == (5, 2, 2)
    assert query(body["next"]) == {"limit": ["2"], "offset": ["4"]}
    assert query(body["previous"]) == {"limit": ["2"], "offset": ["0"]}


@pytest.mark.usefixtures("five_posts")
async def test_it_follows_next_links_to_the_last_page(
    async_client: AsyncClient,
) -> None:
    seen: list[str] = []
    link: str | None = "/api/posts?limit=2"

    while link:
        response = await async_client.get(link)
        seen += titles(response)
        link = response.json()["next"]

    assert seen == [f"Post {number}" for number in range(5, 0, -1)]
    assert query(response.json()["previous"]) == {"limit": ["2"], "offset": ["2"]}


@pytest.mark.usefixtures("five_posts")
async def test_it_pages_with_page_numbers(async_client: AsyncClient) -> None:
    response = await async_client.get("/api/posts", {"limit": 2, "page": 3})

    body = response.json()
    assert titles(response) == ["Post 1"]
    assert body["offset"] == 4
    assert body["next"] is None
    assert query(body["previous"]) == {"limit": ["2"], "offset": ["2"]}


@pytest.mark.usefixtures("five_posts")
async def test_it_prefers_page_over_offset(async_client: AsyncClient) -> None:
    response = await async_client.get("/api/posts?limit=1&page=2&offset=0")

    assert titles(response) == ["Post 4"]


async def test_it_caps_the_default_page_at_twenty(
    async_client: AsyncClient, author: User
) -> None:
    await Post.objects.abulk_create(
        Post(title=f"Post {n}", body="b", author=author, published=True)
        for n in range(25)
    )

    response = await async_client.get("/api/posts")

    body = response.json()
    assert len(body["results"]) == 20
    assert body["count"] == 25
    assert query(body["next"]) == {"limit": ["20"], "offset": ["20"]}


@pytest.mark.parametrize("limit", ["1", "100"])
async def test_it_accepts_limits_at_the_bounds(
    async_client: AsyncClient, make_post: MakePost, limit: str
) -> None:
    await make_post()

    response = await async_client.get("/api/posts", {"limit": limit})

    assert response.status_code == 200
    assert response.json()["limit"] == int(limit)


@pytest.mark.parametrize(
    "params",
    [{"offset": 10**12}, {"page": 10**9, "limit": 100}],
    ids=["offset", "page"],
)
async def test_it_answers_the_largest_windows(
    async_client: AsyncClient, make_post: MakePost, params: dict[str, int]
) -> None:
    await make_post()

    response = await async_client.get("/api/posts", params)

    assert response.status_code == 200
    assert response.json()["results"] == []
    assert response.json()["count"] == 1


@pytest.mark.usefixtures("five_posts")
async def test_it_answers_an_empty_page_beyond_the_end(
    async_client: AsyncClient,
) -> None:
    response = await async_client.get("/api/posts", {"offset": 50, "limit": 10})

    body = response.json()
    assert response.status_code == 200
    assert body["results"] == []
    assert body["count"] == 5
    assert body["next"] is None
    assert query(body["previous"]) == {"limit": ["10"], "offset": ["40"]}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "9" * 5000}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"page": "0"}, "page"),
        ({"page": "last"}, "page"),
        ({"q": "nul\x00byte"}, "q"),
    ],
)
async def test_it_rejects_invalid_query_parameters(
    async_client: AsyncClient, params: dict[str, str], field: str
) -> None:
    response = await async_client.get("/api/posts", params)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid query parameter"
    assert list(response.json()["fields"]) == [field]


async def test_it_searches_titles_and_bodies_ignoring_case(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    await make_post("Django tips", body="Nothing to see")
    await make_post("Cooking", body="A recipe for DJANGO fans")
    await make_post("Gardening", body="Tomatoes")
    await make_post("django draft", published=False)

    response = await async_client.get("/api/posts", {"q": " dJaNgO "})

    assert titles(response) == ["Cooking", "Django tips"]
    assert response.json()["count"] == 2


async def test_it_searches_unicode_text(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    await make_post("Party 🎉 time")
    await make_post("שלום עולם")
    await make_post("Plain")

    party = await async_client.get("/api/posts", {"q": "🎉"})
    hebrew = await async_client.get("/api/posts", {"q": "עולם"})

    assert titles(party) == ["Party 🎉 time"]
    assert titles(hebrew) == ["שלום עולם"]


async def test_it_treats_like_wildcards_literally(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    await make_post("100% sure")
    await make_post("Anything")

    response = await async_client.get("/api/posts", {"q": "%"})

    assert titles(response) == ["100% sure"]


async def test_it_keeps_the_search_in_page_links(
    async_client: AsyncClient, make_post: MakePost
) -> None:
    for number in range(3):
        await make_post(f"Café {number}")

    response = await async_client.get("/api/posts", {"q": "Café", "limit": 1})

    assert query(response.json()["next"]) == {
        "limit": ["1"],
        "offset": ["1"],
        "q": ["Café"],
    }


async def test_it_answers_405_for_other_methods(async_client: AsyncClient) -> None:
    response = await async_client.put("/api/posts", {}, "application/json")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD, OPTIONS, POST"
    assert response.json() == {"error": "method PUT is not allowed"}


async def test_it_answers_options_with_the_allowed_methods(
    async_client: AsyncClient,
) -> None:
    response = await async_client.options("/api/posts")

    assert response.status_code == 204
    assert response["Allow"] == "GET, HEAD, OPTIONS, POST"
