"""Liveness and readiness for the load balancer and the orchestrator."""

import redis
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


@require_GET
def healthz(request):
    """The process is up and serving; touches nothing else."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request):
    """Ready to take traffic: the database answers, and the broker too when one is set."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready
        checks["database"] = f"error: {exc.__class__.__name__}"
    if settings.CELERY_BROKER_URL.startswith("redis"):
        try:
            redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=1).ping()
            checks["broker"] = "ok"
        except redis.RedisError as exc:
            checks["broker"] = f"error: {exc.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks},
                        status=200 if ready else 503)  # fmt: skip
