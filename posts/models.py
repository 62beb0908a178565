from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


class PostQuerySet(models.QuerySet):
    def published(self) -> "PostQuerySet":
        return self.filter(published=True)

    def visible_to(self, user: Any, *, can_see_drafts: bool) -> "PostQuerySet":
        """Published posts, plus the caller's own drafts, or every post for editors."""
        if can_see_drafts:
            return self
        if user.is_authenticated:
            return self.filter(Q(published=True) | Q(author=user))
        return self.published()

    def matching(self, query: str) -> "PostQuerySet":
        return self.filter(Q(title__icontains=query) | Q(body__icontains=query))


class Post(models.Model):
    title = models.CharField(max_length=200)
    body = models.TextField()
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="posts",
    )
    published = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PostQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["published", "-created_at"])]

    def __str__(self) -> str:
        return self.title

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "body": self.body,
            "author": self.author.get_username(),
            "published": self.published,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }
