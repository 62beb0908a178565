from django.contrib import admin

from chat.models import Conversation, Message


class MessageInline(admin.TabularInline):
    model = Message
    fields = ["created_at", "role", "status", "error_code", "superseded", "content"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "owner", "backend", "updated_at", "active_since"]
    list_filter = ["backend", "updated_at"]
    search_fields = ["title", "upstream_thread_id", "owner__username"]
    date_hierarchy = "updated_at"
    readonly_fields = [
        "owner",
        "owner_key",
        "backend",
        "upstream_thread_id",
        "active_since",
        "active_run_id",
        "created_at",
        "updated_at",
    ]
    list_select_related = ["owner"]
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "__str__",
        "conversation",
        "role",
        "status",
        "error_code",
        "created_at",
    ]
    list_filter = ["role", "status", "error_code", "superseded"]
    search_fields = ["content", "upstream_run_id"]
    readonly_fields = [
        "conversation",
        "role",
        "content",
        "status",
        "error_code",
        "error_message",
        "upstream_run_id",
        "usage",
        "annotations",
        "reply_to",
        "superseded",
        "tools",
        "files",
        "created_at",
        "finished_at",
        "time_to_first_chunk_ms",
    ]
    list_select_related = ["conversation"]
