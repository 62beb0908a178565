"""Chat tools over the posts, for agents (see `CHAT_TOOLS` in the README)."""

from typing import Annotated, Any

from pydantic import Field

from posts.models import Post


async def search_posts(
    query: Annotated[str, Field(min_length=1, max_length=200)],
    limit: Annotated[int, Field(ge=1, le=10)] = 5,
) -> dict[str, Any]:
    """Searches this site's published posts by words in their title or body;
    returns the newest matches with their id, title, URL path and an excerpt."""
    posts = Post.objects.published().matching(query).order_by("-created_at")
    found = [post async for post in posts[:limit]]
    return {
        "posts": [
            {
                "id": post.id,
                "title": post.title,
                "path": f"/api/posts/{post.id}",
                "excerpt": post.body[:300],
            }
            for post in found
        ]
    }
