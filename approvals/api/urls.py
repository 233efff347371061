"""/api/v1/approvals routes."""

from django.urls import path

from . import views

urlpatterns = [
    path("approvals", views.ApprovalListApi.as_view(), name="approvals-list"),
    path("approvals/<uuid:request_id>", views.ApprovalDetailApi.as_view(), name="approvals-read"),
    path(
        "approvals/<uuid:request_id>/approve",
        views.ApprovalApproveApi.as_view(),
        name="approvals-approve",
    ),
    path(
        "approvals/<uuid:request_id>/reject",
        views.ApprovalRejectApi.as_view(),
        name="approvals-reject",
    ),
]
