from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from posts.models import Post
from posts.views import MAX_QUERY_CHARS


@admin.register(Post)
class PostAdmin(admin.ModelAdmin):
    list_display = ["title", "author", "published", "created_at", "updated_at"]
    list_filter = ["published", "created_at", "author"]
    search_fields = ["title", "body"]
    date_hierarchy = "created_at"
    readonly_fields = ["author", "created_at", "updated_at"]
    list_select_related = ["author"]

    def save_model(self, request: HttpRequest, obj: Post, form, change: bool) -> None:
        if not change:
            obj.author = request.user
        super().save_model(request, obj, form, change)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Post], search_term: str
    ) -> tuple[QuerySet[Post], bool]:
        if len(search_term) > MAX_QUERY_CHARS:
            self.message_user(
                request,
                f"Search for at most {MAX_QUERY_CHARS} characters.",
                messages.WARNING,
            )
            return queryset.none(), False
        return super().get_search_results(request, queryset, search_term)
