import contextlib
import hashlib
import logging
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from chatsite.middleware import CACHE_UNREACHABLE
from chatsite.models import ApiKey

logger = logging.getLogger(__name__)


class ThrottledLoginForm(AdminAuthenticationForm):
    """The admin login form, with failed logins counted in Django's cache per
    account and per address. Past ADMIN_LOGIN_MAX_FAILURES for the account, or
    ADMIN_LOGIN_MAX_FAILURES_PER_IP from the address, within
    ADMIN_LOGIN_LOCKOUT_SECONDS, no password is checked, the right one included.
    Other accounts stay open from other addresses; a login clears its account's
    count. When the cache cannot be reached, logins are not throttled."""

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "throttled": (
            "Too many failed logins for this account or from this address. "
            "Try again in %(minutes)d minutes."
        ),
    }

    def clean(self) -> dict[str, Any]:
        username = (self.cleaned_data.get("username") or "").lower()
        account = "admin-login:account:" + hashlib.sha256(username.encode()).hexdigest()
        address = "admin-login:ip:" + self.request.META.get("REMOTE_ADDR", "")
        limits = {
            account: settings.ADMIN_LOGIN_MAX_FAILURES,
            address: settings.ADMIN_LOGIN_MAX_FAILURES_PER_IP,
        }
        try:
            failures = cache.get_many(limits)
        except CACHE_UNREACHABLE as exc:
            logger.warning("admin login not throttled: cache unreachable: %s", exc)
            return super().clean()
        if any(failures.get(key, 0) >= limit for key, limit in limits.items()):
            minutes = -(-settings.ADMIN_LOGIN_LOCKOUT_SECONDS // 60)
            raise ValidationError(
                self.error_messages["throttled"],
                code="throttled",
                params={"minutes": minutes},
            )
        try:
            cleaned = super().clean()
        except ValidationError:
            with contextlib.suppress(*CACHE_UNREACHABLE):
                for key in limits:
                    cache.add(key, 0, timeout=settings.ADMIN_LOGIN_LOCKOUT_SECONDS)
                    cache.incr(key)
            raise
        cache.delete(account)
        return cleaned


admin.site.login_form = ThrottledLoginForm


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "user",
        "prefix",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at", "created_at"]
    search_fields = ["name", "prefix", "user__username"]
    # Revoking is one-way: through the action or `manage.py api_key --revoke`.
    readonly_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]
    actions = ["revoke_keys"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        raw = None if change else obj.set_new_key()
        super().save_model(request, obj, form, change)
        if raw:
            self.message_user(
                request,
                f"New API key (shown once, copy it now): {raw}",
                messages.WARNING,
            )

    @admin.action(description="Revoke selected API keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        self.message_user(request, f"Revoked {count} API key(s).")
