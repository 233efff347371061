"""URL configuration: the admin (ops console), the v1 API, and the ops endpoints."""

from django.contrib import admin
from django.urls import include, path

from . import ops

urlpatterns = [
    path("admin/", admin.site.urls),
    # Ops: liveness, readiness, Prometheus metrics (`/metrics`).
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),
]
