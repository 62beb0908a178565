from django.urls import path, re_path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.page, name="page"),
    re_path(r"^api/chat/?$", views.chat, name="stream"),
    path("api/chat/<uuid:conversation_id>/stop", views.stop, name="stop"),
    re_path(r"^api/conversations/?$", views.conversations, name="conversations"),
    path(
        "api/conversations/<uuid:conversation_id>",
        views.conversation,
        name="conversation",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/stream",
        views.resume,
        name="resume",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/regenerate",
        views.regenerate,
        name="regenerate",
    ),
    path(
        "api/conversations/<uuid:conversation_id>/files/<str:file_id>",
        views.file,
        name="file",
    ),
]
