"""chatsite settings, read only from the environment.

Every variable is listed in `.env.example` and in the README's configuration table.
The helpers below reject malformed values loudly instead of guessing.
"""

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"{name} must be a boolean (1/0, true/false), not {raw!r}"
    )


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, not {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, not {value}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_origins(name: str) -> list[str]:
    origins = env_list(name)
    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path:
            raise ImproperlyConfigured(
                f"{name} entries must look like https://example.com, not {origin!r}"
            )
    return origins


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {choices}, not {value!r}")
    return value


def _dev_secret_key() -> str:
    """A random key kept under var/ so sessions survive restarts in development."""
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        VAR_DIR.mkdir(exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


# --- Core -------------------------------------------------------------------------

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off"
        )
    SECRET_KEY = _dev_secret_key()

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_origins("CSRF_TRUSTED_ORIGINS")
CORS_ALLOWED_ORIGINS = env_origins("CORS_ALLOWED_ORIGINS")
CORS_ALLOW_CREDENTIALS = True
CORS_URLS_REGEX = r"^/api/.*$"

VERSION = "1.0.0"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "chatsite",
    "posts",
    "chat",
]

# Every entry is async-native, so a request never hops to a thread for middleware
# (each sync MiddlewareMixin costs one hop per hook under ASGI). The wrappers in
# chatsite.middleware run Django's own middleware logic inline on the event loop.
MIDDLEWARE = [
    "chatsite.middleware.ClientAddressMiddleware",
    "chatsite.middleware.RequestLogMiddleware",
    "chatsite.middleware.AllowedHostsMiddleware",
    "chatsite.middleware.CacheOutageMiddleware",
    "chatsite.middleware.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "chatsite.middleware.SessionMiddleware",
    "chatsite.middleware.CsrfViewMiddleware",
    "chatsite.middleware.AuthenticationMiddleware",
    "chatsite.middleware.EasyAuthMiddleware",
    "chatsite.middleware.MessageMiddleware",
    "chatsite.middleware.XFrameOptionsMiddleware",
    "chatsite.middleware.ContentSecurityPolicyMiddleware",
]

# Django finds its security middleware by dotted path; ours are subclasses, which
# chatsite.checks verifies instead (chatsite.W001-W003, and the setting checks that
# Django runs only for its own paths). HSTS preload (W021) is the domain owner's
# commitment, not the app's: a shared domain such as azurecontainerapps.io cannot
# be preloaded.
SILENCED_SYSTEM_CHECKS = [
    "security.W001",
    "security.W002",
    "security.W003",
    "security.W021",
]

ROOT_URLCONF = "chatsite.urls"
# Threads that run sync work (ORM calls, sync views) for all requests; see asgi.py.
DJANGO_SYNC_THREADS = env_int("DJANGO_SYNC_THREADS", 8, minimum=1)
ASGI_APPLICATION = "chatsite.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.csp",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chatsite.easyauth.links",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------

DATABASE_URL = env_str("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
try:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0, conn_health_checks=True)
except ValueError as exc:
    raise ImproperlyConfigured(
        f"DATABASE_URL is not a valid database URL: {exc}"
    ) from exc
if _db["ENGINE"] == "django.db.backends.postgresql":
    # Persistent connections leak under ASGI (one thread per request), so
    # CONN_MAX_AGE stays 0 and psycopg's pool does the reuse instead. It keeps a
    # connection open for each thread that runs sync work (up to its maximum):
    # a burst of requests then opens none on its way (each was a connect on the
    # way to a first chunk, and 30 KiB of memory kept after the burst).
    _pool_max = env_int("DB_POOL_MAX_SIZE", 20, minimum=1)
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DB_POOL_MIN_SIZE", min(DJANGO_SYNC_THREADS, _pool_max)),
        "max_size": _pool_max,
        "timeout": env_float("DB_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
elif _db["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(exist_ok=True)
    # WAL lets readers run beside the single writer; IMMEDIATE makes writers queue
    # on the busy timeout instead of failing with "database is locked".
    _db.setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    )
    # A file, not memory, so a server subprocess started by a test shares it.
    _db["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
    # Each of the few shared threads (chatsite.threads) keeps its connection:
    # closed at the end of every request, it was opened again by the next reply
    # step on that thread, and connecting runs a dozen statements.
    _db["CONN_MAX_AGE"] = None
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (rate-limit counters, shared by replicas when Redis is configured) -------

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "chatsite",
            # Without timeouts an unreachable Redis blocks a request forever.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Auth, sessions, security -------------------------------------------------------

_VALIDATORS = "django.contrib.auth.password_validation"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": f"{_VALIDATORS}.{name}"}
    for name in (
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    )
]
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"

# Sign-in through Container Apps authentication with Entra ID (chatsite/easyauth.py).
# The principal headers are trusted only with this on, and it must be on only where
# the Container Apps ingress is the one way in: anyone who reaches the container
# directly can write them.
AUTH_EASY_AUTH = env_bool("AUTH_EASY_AUTH", False)
# Entra group object ids and app role values whose members are staff (the admin) or
# superusers. With none set, staff flags are left to the admin.
AUTH_EASY_AUTH_STAFF_GROUPS = env_list("AUTH_EASY_AUTH_STAFF_GROUPS")
AUTH_EASY_AUTH_SUPERUSER_GROUPS = env_list("AUTH_EASY_AUTH_SUPERUSER_GROUPS")
AUTH_EASY_AUTH_STAFF_ROLES = env_list("AUTH_EASY_AUTH_STAFF_ROLES")
AUTH_EASY_AUTH_SUPERUSER_ROLES = env_list("AUTH_EASY_AUTH_SUPERUSER_ROLES")
# Only principals of this tenant sign in (empty: whatever the ingress accepts).
AUTH_EASY_AUTH_TENANT_ID = env_str("AUTH_EASY_AUTH_TENANT_ID")
AUTH_EASY_AUTH_LOGIN_URL = env_str("AUTH_EASY_AUTH_LOGIN_URL", "/.auth/login/aad")
AUTH_EASY_AUTH_LOGOUT_URL = env_str(
    "AUTH_EASY_AUTH_LOGOUT_URL", "/.auth/logout?post_logout_redirect_uri=/"
)
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "chatsite.easyauth.EasyAuthBackend",
]
# Logging out of the admin ends the ingress's sign-in too; otherwise its principal
# would sign the user straight back in.
LOGOUT_REDIRECT_URL = AUTH_EASY_AUTH_LOGOUT_URL if AUTH_EASY_AUTH else None

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_SSL_REDIRECT = env_bool("DJANGO_SSL_REDIRECT", False)
SECURE_REDIRECT_EXEMPT = [r"^api/health"]
# Container Apps terminates TLS at its ingress and forwards the scheme.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = False
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# The pages use none of these browser features (chatsite.middleware sends it).
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "hid",
        "magnetometer",
        "microphone",
        "midi",
        "payment",
        "serial",
        "usb",
        "xr-spatial-tracking",
    )
)
# Proxies in front of the app that append to X-Forwarded-For (1 behind the Container
# Apps ingress); the client's address is the one the outermost of them appended.
# 0: the connecting address, X-Forwarded-For ignored.
TRUSTED_PROXY_HOPS = env_int("TRUSTED_PROXY_HOPS", 0)
# Admin login: after this many failed passwords for one account, or from one
# address, within the lockout period, no password is checked until it ends.
ADMIN_LOGIN_MAX_FAILURES = env_int("ADMIN_LOGIN_MAX_FAILURES", 5, minimum=1)
ADMIN_LOGIN_MAX_FAILURES_PER_IP = env_int(
    "ADMIN_LOGIN_MAX_FAILURES_PER_IP", 20, minimum=1
)
ADMIN_LOGIN_LOCKOUT_SECONDS = env_int("ADMIN_LOGIN_LOCKOUT_SECONDS", 900, minimum=1)
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}

# Request bodies above this answer 413, counted as they arrive (chatsite.asgi).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("API_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)

# --- Internationalisation -----------------------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files -------------------------------------------------------------------
# ServeStatic instead of WhiteNoise: WhiteNoise is sync-only, which under ASGI costs
# a thread hop on every request and buffers whole files in memory.

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "chatsite.storage.StaticFilesStorage"
        )
    },
}
SERVESTATIC_USE_FINDERS = DEBUG
SERVESTATIC_AUTOREFRESH = DEBUG

# --- API keys -------------------------------------------------------------------------

API_KEY_PREFIX = "cs_"

# --- Chat -----------------------------------------------------------------------------

CHAT_BACKEND = env_str("CHAT_BACKEND", "local")
CHAT_REQUIRE_LOGIN = env_bool("CHAT_REQUIRE_LOGIN", False)
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 8000, minimum=1)
CHAT_KEEPALIVE_SECONDS = env_float("CHAT_KEEPALIVE_SECONDS", 15.0, minimum=0.05)
CHAT_UPSTREAM_TIMEOUT_SECONDS = env_float(
    "CHAT_UPSTREAM_TIMEOUT_SECONDS", 120.0, minimum=0.1
)
CHAT_MAX_STREAM_SECONDS = env_float("CHAT_MAX_STREAM_SECONDS", 900.0, minimum=1.0)
# When the client that started a reply goes away: "continue" lets the reply run to
# its end (stored, and resumable from GET /api/conversations/<id>/stream);
# "cancel" stops it and cancels the agent's run.
CHAT_ON_DISCONNECT = env_choice(
    "CHAT_ON_DISCONNECT", "continue", ("continue", "cancel")
)
# How long a finished reply's frames stay in the reply log for late readers.
CHAT_REPLAY_TTL_SECONDS = env_float("CHAT_REPLAY_TTL_SECONDS", 300.0)
# Entries kept per reply in its Redis Stream (XADD MAXLEN ~; an entry holds the
# frames of one copy round, every 10 ms): bounds a runaway reply.
CHAT_REPLAY_MAX_ENTRIES = env_int("CHAT_REPLAY_MAX_ENTRIES", 100_000, minimum=100)
# A process's heartbeat lease: when a process dies, its conversation locks and
# stream slots are free again within this long, and another replica may finish
# the replies it was writing.
CHAT_LEASE_SECONDS = env_float("CHAT_LEASE_SECONDS", 10.0, minimum=1.0)
# On SIGTERM, replies still streaming after this long are ended cleanly; keep it
# below uvicorn's --timeout-graceful-shutdown.
CHAT_DRAIN_SECONDS = env_float("CHAT_DRAIN_SECONDS", 10.0)
CHAT_LOCAL_DELAY_MS = env_int("CHAT_LOCAL_DELAY_MS", 30)
# Function tools the agent may call, run by this site (chat/tools.py): dotted
# paths of functions, and how long one call may take.
CHAT_TOOLS = env_list("CHAT_TOOLS")
CHAT_TOOL_TIMEOUT_SECONDS = env_float("CHAT_TOOL_TIMEOUT_SECONDS", 30.0, minimum=0.001)
# Per user, per browser session for anonymous visitors, per IP address for
# cookie-less callers; 0 turns a limit off. All sessions from one address share a
# looser ceiling (by default 10 times the limit) against cookie rotation.
CHAT_RATE_LIMIT_PER_MINUTE = env_int("CHAT_RATE_LIMIT_PER_MINUTE", 20)
CHAT_MAX_CONCURRENT_STREAMS = env_int("CHAT_MAX_CONCURRENT_STREAMS", 3)
CHAT_RATE_LIMIT_PER_MINUTE_PER_IP = env_int(
    "CHAT_RATE_LIMIT_PER_MINUTE_PER_IP", 10 * CHAT_RATE_LIMIT_PER_MINUTE
)
CHAT_MAX_CONCURRENT_STREAMS_PER_IP = env_int(
    "CHAT_MAX_CONCURRENT_STREAMS_PER_IP", 10 * CHAT_MAX_CONCURRENT_STREAMS
)
# How long a POST's Idempotency-Key is remembered: at least as long as a reply
# can run, so a retry finds the reply it repeats.
CHAT_IDEMPOTENCY_SECONDS = env_float(
    "CHAT_IDEMPOTENCY_SECONDS",
    max(86400.0, CHAT_MAX_STREAM_SECONDS),
    minimum=CHAT_MAX_STREAM_SECONDS,
)
CHAT_UPSTREAM_RETRIES = env_int("CHAT_UPSTREAM_RETRIES", 2)
CHAT_UPSTREAM_MAX_CONNECTIONS = env_int(
    "CHAT_UPSTREAM_MAX_CONNECTIONS", 2000, minimum=1
)

AZURE_AI_PROJECT_ENDPOINT = env_str("AZURE_AI_PROJECT_ENDPOINT")
AZURE_AI_ENDPOINT = env_str("AZURE_AI_ENDPOINT")
AZURE_AI_PROJECT_NAME = env_str("AZURE_AI_PROJECT_NAME")
AZURE_AI_AGENT_ID = env_str("AZURE_AI_AGENT_ID")
AZURE_AI_AGENT_NAME = env_str("AZURE_AI_AGENT_NAME")
AZURE_AI_AGENT_VERSION = env_str("AZURE_AI_AGENT_VERSION")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_MODEL = env_str("OPENAI_MODEL")
OPENAI_SYSTEM_PROMPT = env_str("OPENAI_SYSTEM_PROMPT")
OPENAI_HISTORY_CHARS = env_int("OPENAI_HISTORY_CHARS", 32000)
AZURE_AI_CREDENTIAL = env_choice("AZURE_AI_CREDENTIAL", "default", ("default", "dev"))
AZURE_CLIENT_ID = env_str("AZURE_CLIENT_ID")

# --- Telemetry ----------------------------------------------------------------------

# Traces and metrics go to Azure Monitor when set (chatsite/telemetry.py).
APPLICATIONINSIGHTS_CONNECTION_STRING = env_str("APPLICATIONINSIGHTS_CONNECTION_STRING")

# --- Logging --------------------------------------------------------------------------

LOG_LEVEL = env_choice(
    "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
            },
        },
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain" if DEBUG else "json",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "azure": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}
