"""Settings for every environment, read from environment variables (12-factor).

Defaults are safe for local development: SQLite, eager in-process tasks, DEBUG on.
Production overrides live in `production.py`, which refuses to start without real secrets.
"""

from decimal import Decimal
from pathlib import Path

import environ

from loyalty_project.environment import env_file_read

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
env_file_read()  # as the entry points did (environment.py)

DEBUG = env.bool("DEBUG", default=True)
# Development-only fallback; production.py requires SECRET_KEY from the environment.
SECRET_KEY = env.str("SECRET_KEY", default="dev-only-insecure-key-change-me-0123456789abcdefghij")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_prometheus",
    "guardian",
    "pgtrigger",
    "loyalty",
    "audit",
    "approvals",
    "sira",
    "access",
]

# The *OutsideApi classes are Django's and django_prometheus's own, skipped for /api/v1/
# requests, which use none of them (token auth, no session or cookie; see access/middleware.py).
MIDDLEWARE = [
    "access.middleware.PrometheusBeforeOutsideApi",
    "access.middleware.ApiNotFoundAsProblem",  # with DEBUG on only
    "django.middleware.security.SecurityMiddleware",
    "access.middleware.RequestSizeLimitMiddleware",
    "access.middleware.NulInUrlRefused",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "access.middleware.SessionOutsideApi",
    "django.middleware.common.CommonMiddleware",
    # Kept whole: `check --deploy` wants it, and DRF views are csrf_exempt (token auth).
    "django.middleware.csrf.CsrfViewMiddleware",
    "access.middleware.AuthenticationOutsideApi",
    "access.middleware.MessagesOutsideApi",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "access.middleware.PrometheusAfter",
]

ROOT_URLCONF = "loyalty_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "loyalty_project.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# Persistent connections: a new PostgreSQL connection per request costs ~4x throughput.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
# A reused connection is checked at the start of each request, so a request after a
# database restart does not fail on a dead connection; off, the first request of each worker
# after a restart answers 500 (safe to retry with its Idempotency-Key). On PostgreSQL the
# check looks at the idle connection's socket first and sends Django's `SELECT 1` (a round
# trip, ~0.2 ms of CPU) only when the server has said something (loyalty_project/postgresql).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["ENGINE"] = "loyalty_project.postgresql"
# Locks must not be held while a response is serialised; services own their transactions.
DATABASES["default"]["ATOMIC_REQUESTS"] = False
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20})
elif env.bool("DB_PREPARED_STATEMENTS", default=True):
    # Server-side parameters and prepared statements: a statement run 5 times is planned
    # once per connection. Measured: -30% PostgreSQL CPU per ingested event (docs/
    # BENCHMARKS.md). Set DB_PREPARED_STATEMENTS=false behind a transaction-mode pooler.
    # Limits that come with it: at most 65,535 parameters per statement (batch bulk_create
    # and long `__in` lists), one command per statement (pgtrigger.ignore() cannot work).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"server_side_binding": True, "prepare_threshold": 5}
    )

if DATABASES["default"]["ENGINE"] == "loyalty_project.postgresql":
    # The planner's price of a random page read, for this application's connections only
    # (PostgreSQL's default, 4, prices a disk seek). A batch finds its 1,000 balances, keys
    # and rows to update by index probes; priced as seeks, 1,000 probes lost to a scan of the
    # whole balance table, hashed, in programs of some 20,000 to 100,000 members: twice the
    # PostgreSQL time of the batch (docs/BENCHMARKS.md, session 14). 1.1 is the usual value
    # where the working set is in memory or on SSD. Empty leaves the server's setting (a
    # transaction-mode pooler refuses startup options: set it on the role there).
    page_cost = env.str("DB_RANDOM_PAGE_COST", default="1.1")
    if page_cost:
        options = DATABASES["default"].setdefault("OPTIONS", {})
        options["options"] = " ".join(
            filter(None, [options.get("options"), f"-c random_page_cost={float(page_cost)}"])
        )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.path("STATIC_ROOT", default=BASE_DIR / "staticfiles")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}

# --- Celery -------------------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
# Without a broker (development), tasks run in-process so `make run` needs no Redis.
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not CELERY_BROKER_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = env.str("CELERY_TIMEZONE", default="UTC")
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# --- API ----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # The role always comes from one of these verified credentials (see access/).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "access.authentication.JWTAuthentication",
        "access.authentication.APIKeyAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["access.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "access.negotiation.JSONFirstNegotiation",
    "EXCEPTION_HANDLER": "access.problems.problem_exception_handler",
    "UNAUTHENTICATED_USER": None,
}
# API request bodies above this are refused with 413 (a batch of 1,000 events fits).
LOYALTY_API_MAX_BODY_BYTES = env.int("LOYALTY_API_MAX_BODY_BYTES", default=2 * 1024 * 1024)
# Every other request body (an event, a program, an adjustment: a few KiB at most). A body is
# parsed and fingerprinted before it is validated, and 2 MiB of small JSON values cost ~4 s
# of CPU and ~230 MB (a valid batch of that size: ~0.3 s): only the batch may be that large.
LOYALTY_API_MAX_SINGLE_BODY_BYTES = env.int("LOYALTY_API_MAX_SINGLE_BODY_BYTES", default=64 * 1024)
# Trusted reverse proxies in front of the app (client IP taken from X-Forwarded-For).
LOYALTY_API_NUM_PROXIES = env.int("LOYALTY_API_NUM_PROXIES", default=0)
# Idempotency-Key records are kept this long; a claim abandoned by a crashed request may be
# taken over after LOCK_SECONDS (longer than any request may run).
LOYALTY_IDEMPOTENCY_TTL_HOURS = env.int("LOYALTY_IDEMPOTENCY_TTL_HOURS", default=48)
LOYALTY_IDEMPOTENCY_LOCK_SECONDS = env.int("LOYALTY_IDEMPOTENCY_LOCK_SECONDS", default=120)
# Multi-signature approval: sizes above which an operation needs approval (access/approval_gate).
# balance_adjustment: points either way; budget_change: program currency.
LOYALTY_APPROVAL_THRESHOLDS = {
    "balance_adjustment": Decimal(env.str("LOYALTY_APPROVAL_ADJUSTMENT_POINTS", default="10000")),
    "budget_change": Decimal(env.str("LOYALTY_APPROVAL_BUDGET_CHANGE", default="50000")),
}
LOYALTY_APPROVAL_REQUIRED_ROLES = env.list(
    "LOYALTY_APPROVAL_REQUIRED_ROLES", default=["ops_marketing", "finance_ops"]
)
LOYALTY_APPROVAL_FREEZE_REQUIRED = env.bool("LOYALTY_APPROVAL_FREEZE_REQUIRED", default=False)
# Defaults only: finance overrides each operation's policy in the database (approvals app).
LOYALTY_APPROVAL_TTL_HOURS = env.int("LOYALTY_APPROVAL_TTL_HOURS", default=72)
# Key of the audit entries' HMAC digests; keep it outside the database. Empty: derived from
# SECRET_KEY (development). Changing it makes audit_verify report every older entry.
AUDIT_HMAC_KEY = env.str("AUDIT_HMAC_KEY", default="")
SPECTACULAR_SETTINGS = {
    "TITLE": "Molam Loyalty API",
    "DESCRIPTION": "Loyalty and rewards engine: events, redemptions, vouchers, programs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Request bodies get components of their own, with what only a request has: a required
    # text's `minLength: 1` (DRF refuses a blank one), no read-only fields.
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "access.schema.problem_responses_hook",
    ],
    "ENUM_NAME_OVERRIDES": {
        "EventTypeEnum": ["purchase", "refund", "referral", "campaign_bonus", "manual_adjust"],
        "LedgerEntryTypeEnum": "loyalty.models.LedgerEntry.Type",
        "RewardTypeEnum": "loyalty.models.Voucher.Type",
    },
}

# --- Loyalty domain -----------------------------------------------------------------------
LOYALTY_JWT_PUBLIC_KEY = env.str("LOYALTY_JWT_PUBLIC_KEY", default="")
LOYALTY_JWT_JWKS_URL = env.str("LOYALTY_JWT_JWKS_URL", default="")
# How long a fetched key set is used before it is fetched again: a key withdrawn from the set
# (a rotation, a compromise) stops verifying tokens within this time.
LOYALTY_JWT_JWKS_LIFESPAN_SECONDS = env.int("LOYALTY_JWT_JWKS_LIFESPAN_SECONDS", default=300)
LOYALTY_JWT_ISSUER = env.str("LOYALTY_JWT_ISSUER", default="https://id.molam.local")
LOYALTY_JWT_AUDIENCE = env.str("LOYALTY_JWT_AUDIENCE", default="molam-loyalty")
LOYALTY_ENCRYPTION_KEYS = env.str("LOYALTY_ENCRYPTION_KEYS", default="")
# Budget counters are split over this many rows so concurrent awards of one program do not
# queue on a single row.
LOYALTY_BUDGET_SHARDS = env.int("LOYALTY_BUDGET_SHARDS", default=16)
LOYALTY_HOLD_TTL_SECONDS = env.int("LOYALTY_HOLD_TTL_SECONDS", default=900)
LOYALTY_VOUCHER_VALIDITY_DAYS = env.int("LOYALTY_VOUCHER_VALIDITY_DAYS", default=90)
# A job that sent no heartbeat for this long is considered abandoned and may be taken over.
LOYALTY_JOB_STALE_SECONDS = env.int("LOYALTY_JOB_STALE_SECONDS", default=3600)
