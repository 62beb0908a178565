from django.urls import re_path

from posts import views

app_name = "posts"

# Both spellings are accepted: the old clients call /api/posts without a slash.
urlpatterns = [
    re_path(r"^posts/?$", views.posts, name="list"),
    re_path(r"^posts/(?P<post_id>[0-9]+)/?$", views.post, name="detail"),
]
