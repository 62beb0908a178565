"""Deploy checks for our middleware.

Django's security.W001-W003 look for its middleware by dotted path, and ours are
subclasses that run the same code without a thread hop (chatsite/middleware.py).
Those three checks are silenced in settings; these check the same thing by class.
"""

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.module_loading import import_string

REQUIRED = [
    ("chatsite.W001", SecurityMiddleware, "HSTS, SSL redirect and nosniff headers"),
    ("chatsite.W002", XFrameOptionsMiddleware, "the X-Frame-Options header"),
    ("chatsite.W003", CsrfViewMiddleware, "CSRF protection"),
]


@register(Tags.security, deploy=True)
def check_security_middleware(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    installed = [import_string(path) for path in settings.MIDDLEWARE]
    return [
        Warning(
            f"No {base.__name__} (or subclass) in MIDDLEWARE: no {purpose}.",
            id=check_id,
        )
        for check_id, base, purpose in REQUIRED
        if not any(issubclass(cls, base) for cls in installed if isinstance(cls, type))
    ]
