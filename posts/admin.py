from django.contrib import admin
from django.http import HttpRequest

from posts.models import Post


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
