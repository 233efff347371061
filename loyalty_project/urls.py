"""URL configuration: the admin (ops console), the v1 API, and the ops endpoints."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import ops

# Problem-details JSON for unknown /api/ URLs and crashes; Django's pages elsewhere.
handler404 = "access.problems.not_found_view"
handler500 = "access.problems.server_error_view"

urlpatterns = [
    path("admin/", admin.site.urls),
    # The v1 API. Each app adds ONE include line here for its own api/urls.py.
    path("api/v1/", include("loyalty.api.urls")),
    path("api/v1/", include("audit.api.urls")),
    path("api/v1/", include("approvals.api.urls")),
    path("api/v1/", include("loyalty.api.jobs_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # Ops: liveness, readiness, Prometheus metrics (`/metrics`).
    path("healthz", ops.healthz, name="healthz"),
    path("readyz", ops.readyz, name="readyz"),
    path("", include("django_prometheus.urls")),
]
