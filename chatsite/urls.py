from django.contrib import admin
from django.urls import include, path, re_path

from chatsite import views

urlpatterns = [
    re_path(r"^api/health/?$", views.health, name="health"),
    re_path(r"^api/health/ready/?$", views.ready, name="ready"),
    path("api/openapi.json", views.openapi, name="openapi"),
    path("api/", include("posts.urls")),
    path("", include("chat.urls")),
    path("admin/", admin.site.urls),
    re_path(r"^api/(?P<rest>.*)$", views.api_not_found),
]

handler404 = "chatsite.views.page_not_found"
handler500 = "chatsite.views.server_error"
