"""/api/v1/audit routes."""

from django.urls import path

from . import views

urlpatterns = [
    path("audit", views.AuditSearchApi.as_view(), name="audit-search"),
    path(
        "audit/<str:entity_type>/<str:entity_id>",
        views.AuditEntityTrailApi.as_view(),
        name="audit-entity-trail",
    ),
]
