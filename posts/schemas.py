"""The posts API's request bodies."""

from typing import Annotated

from pydantic import MISSING, Field

from chatsite.api import JsonBody, Text
from posts.models import Post


def column(name: str, *, strip: bool = False) -> Text:
    """A Post text column: NUL is refused and the value stripped here; its blank
    and max_length are the model field's, documented from it and checked, with
    Django's messages, by Post.full_clean() on the row about to be saved."""
    field = Post._meta.get_field(name)
    return Text(
        strip=strip,
        min_length=0 if field.blank else 1,
        max_length=field.max_length,
        enforce_limits=False,
    )


Title = Annotated[
    str,
    column("title", strip=True),
    Field(description="Stored without leading and trailing whitespace"),
]
Body = Annotated[str, column("body")]


class PostInput(JsonBody):
    """A whole post, to create or to replace one (which unpublishes it unless
    `published` is given)."""

    title: Title
    body: Body
    published: bool = False


class PostPatch(JsonBody):
    """Some of a post's fields, to change only those."""

    title: Title | MISSING = MISSING
    body: Body | MISSING = MISSING
    published: bool | MISSING = MISSING
