import re
from typing import Any
from urllib.parse import urlencode

from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, QueryDict

from chatsite.api import (
    INVALID_FIELDS,
    BadRequest,
    api_view,
    json_response,
    parse_json_object,
    require_permission,
    validate,
)
from posts.models import Post
from posts.schemas import PostInput, PostPatch

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# PostgreSQL text cannot hold NUL, so it is refused here rather than failing there.
NUL = "\x00"
NUL_MESSAGE = "must not contain NUL characters"
INTEGER = re.compile(r"-?[0-9]+")
# Longer searches add nothing and can fail in the database (SQLite refuses LIKE
# patterns over 50,000 bytes).
MAX_QUERY_CHARS = 200


def _single(params: QueryDict, name: str) -> str | None:
    """The parameter's value; given twice, it is refused rather than guessed."""
    values = params.getlist(name)
    if len(values) > 1:
        raise BadRequest("invalid query parameter", fields={name: ["given twice"]})
    return values[0] if values else None


def _int_param(params: QueryDict, name: str, default: int, lo: int, hi: int) -> int:
    raw = _single(params, name)
    if raw is None or raw == "":
        return default
    try:
        # int() alone would also take " 7", "+7", "7_0" and other scripts' digits.
        value = int(raw) if INTEGER.fullmatch(raw) else lo - 1
    except ValueError:  # more digits than int() converts
        value = lo - 1
    if not lo <= value <= hi:
        raise BadRequest(
            "invalid query parameter",
            fields={name: [f"must be an integer from {lo} to {hi}"]},
        )
    return value


def _page_window(params: QueryDict) -> tuple[int, int]:
    limit = _int_param(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    # Checked even when `page` wins, so a bad offset is never silently ignored.
    offset = _int_param(params, "offset", 0, 0, 10**12)
    if "page" in params:
        page = _int_param(params, "page", 1, 1, 10**9)
        return limit, (page - 1) * limit
    return limit, offset


def _page_link(request: HttpRequest, limit: int, offset: int) -> str:
    params = request.GET.copy()
    params.pop("page", None)
    params["limit"] = str(limit)
    params["offset"] = str(offset)
    return f"{request.path}?{urlencode(sorted(params.items()))}"


def _apply_fields(post: Post, data: dict[str, Any], *, partial: bool) -> None:
    """Copies JSON fields onto `post` and validates them; saves nothing."""
    try:
        fields = validate(data, PostPatch if partial else PostInput).model_dump()
        errors: dict[str, list[str]] = {}
    except BadRequest as exc:
        # The right fields are copied all the same, so the row check below adds
        # only what the request leaves wrong (a new post's missing title, say).
        errors = exc.fields or {}
        right = {name: value for name, value in data.items() if name not in errors}
        fields = PostPatch.model_validate(right).model_dump()
    for name, value in fields.items():
        setattr(post, name, value)
    try:
        post.full_clean(
            exclude=["author"], validate_unique=False, validate_constraints=False
        )
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            errors.setdefault(name, []).extend(messages)
    if errors:
        raise BadRequest(INVALID_FIELDS, fields=errors)


async def _can_see_drafts(request: HttpRequest) -> bool:
    user = request.api_user
    return user.is_authenticated and await user.ahas_perm("posts.change_post")


async def _visible_post(request: HttpRequest, post_id: str) -> Post:
    posts = Post.objects.visible_to(
        request.api_user, can_see_drafts=await _can_see_drafts(request)
    )
    post = await posts.select_related("author").filter(pk=post_id).afirst()
    if post is None:
        raise BadRequest("post not found", 404)
    return post


async def list_posts(request: HttpRequest) -> HttpResponse:
    limit, offset = _page_window(request.GET)
    posts = Post.objects.visible_to(
        request.api_user, can_see_drafts=await _can_see_drafts(request)
    )
    query = (_single(request.GET, "q") or "").strip()
    if NUL in query:
        raise BadRequest("invalid query parameter", fields={"q": [NUL_MESSAGE]})
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(
            "invalid query parameter",
            fields={"q": [f"must be at most {MAX_QUERY_CHARS} characters"]},
        )
    if query:
        posts = posts.matching(query)
    total = await posts.acount()
    window = posts.select_related("author")[offset : offset + limit]
    results = [post.to_dict() async for post in window]
    has_next = offset + limit < total
    has_previous = offset > 0
    return json_response(
        {
            "count": total,
            "limit": limit,
            "offset": offset,
            "next": _page_link(request, limit, offset + limit) if has_next else None,
            "previous": (
                _page_link(request, limit, max(offset - limit, 0))
                if has_previous
                else None
            ),
            "results": results,
        }
    )


@require_permission("posts.add_post")
async def create_post(request: HttpRequest) -> HttpResponse:
    data = parse_json_object(request)
    post = Post(author=request.api_user)
    _apply_fields(post, data, partial=False)
    await post.asave()
    return json_response(
        post.to_dict(), status=201, headers={"Location": f"/api/posts/{post.pk}"}
    )


async def get_post(request: HttpRequest, post_id: str) -> HttpResponse:
    post = await _visible_post(request, post_id)
    return json_response(post.to_dict())


async def _update_post(
    request: HttpRequest, post_id: str, *, partial: bool
) -> HttpResponse:
    data = parse_json_object(request)
    post = await _visible_post(request, post_id)
    _apply_fields(post, data, partial=partial)
    await post.asave()
    return json_response(post.to_dict())


@require_permission("posts.change_post")
async def replace_post(request: HttpRequest, post_id: str) -> HttpResponse:
    return await _update_post(request, post_id, partial=False)


@require_permission("posts.change_post")
async def patch_post(request: HttpRequest, post_id: str) -> HttpResponse:
    return await _update_post(request, post_id, partial=True)


@require_permission("posts.delete_post")
async def delete_post(request: HttpRequest, post_id: str) -> HttpResponse:
    post = await _visible_post(request, post_id)
    await post.adelete()
    return HttpResponse(status=204)


posts = api_view(GET=list_posts, POST=create_post)
post = api_view(GET=get_post, PUT=replace_post, PATCH=patch_post, DELETE=delete_post)
