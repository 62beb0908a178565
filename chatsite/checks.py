"""Deploy checks for our middleware.

Django's security checks look for its middleware by dotted path, and ours are
subclasses that run the same code without a thread hop (chatsite/middleware.py).
Django's W001-W003 (a middleware missing) are silenced in settings and checked
here by class instead (chatsite.W001-W003). Every other check that Django runs only
when its own middleware is listed (HSTS, SSL redirect, secure cookies, ...) is
repeated here for ours, with Django's ids and messages.
"""

from typing import Any

from django.conf import settings
from django.contrib.sessions.middleware import SessionMiddleware
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.checks.security import base, csrf, sessions
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.csp import ContentSecurityPolicyMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.utils.csp import CSP
from django.utils.module_loading import import_string

REQUIRED = [
    ("chatsite.W001", SecurityMiddleware, "HSTS, SSL redirect and nosniff headers"),
    ("chatsite.W002", XFrameOptionsMiddleware, "the X-Frame-Options header"),
    ("chatsite.W003", CsrfViewMiddleware, "CSRF protection"),
]


def _middleware_classes() -> list[type]:
    classes = [import_string(path) for path in settings.MIDDLEWARE]
    return [cls for cls in classes if isinstance(cls, type)]


def _subclass_installed(middleware: type) -> bool:
    """A subclass of `middleware` is listed (Django checks the class itself)."""
    return any(
        issubclass(cls, middleware) and cls is not middleware
        for cls in _middleware_classes()
    )


@register(Tags.security, deploy=True)
def check_security_middleware(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    installed = _middleware_classes()
    return [
        Warning(
            f"No {middleware.__name__} (or subclass) in MIDDLEWARE: no {purpose}.",
            id=check_id,
        )
        for check_id, middleware, purpose in REQUIRED
        if not any(issubclass(cls, middleware) for cls in installed)
    ]


@register(Tags.security, deploy=True)
def check_middleware_settings(
    app_configs: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    found: list[CheckMessage] = []
    if _subclass_installed(SecurityMiddleware):
        found += _security_settings()
    if (
        _subclass_installed(XFrameOptionsMiddleware)
        and settings.X_FRAME_OPTIONS != "DENY"
    ):
        found.append(base.W019)
    if _subclass_installed(CsrfViewMiddleware) and not (
        settings.CSRF_USE_SESSIONS or settings.CSRF_COOKIE_SECURE is True
    ):
        found.append(csrf.W016)
    if _subclass_installed(SessionMiddleware):
        found += _session_cookie_settings()
    return found


def _security_settings() -> list[CheckMessage]:
    found: list[CheckMessage] = []
    if not settings.SECURE_HSTS_SECONDS:
        found.append(base.W004)
    else:
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS is not True:
            found.append(base.W005)
        if settings.SECURE_HSTS_PRELOAD is not True:
            found.append(base.W021)
    if settings.SECURE_CONTENT_TYPE_NOSNIFF is not True:
        found.append(base.W006)
    if settings.SECURE_SSL_REDIRECT is not True:
        found.append(base.W008)
    policy = settings.SECURE_REFERRER_POLICY
    if policy is None:
        found.append(base.W022)
    else:
        values = (
            {value.strip() for value in policy.split(",")}
            if isinstance(policy, str)
            else set(policy)
        )
        if not values <= base.REFERRER_POLICY_VALUES:
            found.append(base.E023)
    opener = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
    if opener is not None and opener not in base.CROSS_ORIGIN_OPENER_POLICY_VALUES:
        found.append(base.E024)
    return found


def _session_cookie_settings() -> list[CheckMessage]:
    # Django words these for the sessions app and the middleware together, or for
    # the middleware alone; for the app it reports W010/W013 itself.
    with_app = "django.contrib.sessions" in settings.INSTALLED_APPS
    found: list[CheckMessage] = []
    if settings.SESSION_COOKIE_SECURE is not True:
        found.append(sessions.W012 if with_app else sessions.W011)
    if settings.SESSION_COOKIE_HTTPONLY is not True:
        found.append(sessions.W015 if with_app else sessions.W014)
    return found


@register(Tags.security)
def check_csp_nonce(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    if not _subclass_installed(ContentSecurityPolicyMiddleware):
        return []
    policies = [settings.SECURE_CSP, settings.SECURE_CSP_REPORT_ONLY]
    uses_nonce = any(
        values == CSP.NONCE
        or (isinstance(values, list | tuple | set) and CSP.NONCE in values)
        for policy in policies
        if isinstance(policy, dict)
        for values in policy.values()
    )
    processor = "django.template.context_processors.csp"
    has_processor = any(
        processor in template.get("OPTIONS", {}).get("context_processors", [])
        for template in settings.TEMPLATES
    )
    return [base.W027] if uses_nonce and not has_processor else []
