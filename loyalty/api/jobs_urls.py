"""/api/v1/ routes of the background jobs (manual triggers, job status, tier rollback)."""

from django.urls import path

from .jobs import TRIGGER_VIEWS, JobDetailApi, TierRollbackApi

urlpatterns = [
    *(
        path(f"workers/{slug}", view.as_view(), name=f"workers-{slug}")
        for slug, view in TRIGGER_VIEWS.items()
    ),
    path("jobs/<uuid:job_id>", JobDetailApi.as_view(), name="job"),
    path(
        "tier-snapshots/<int:snapshot_id>/rollback",
        TierRollbackApi.as_view(),
        name="tier-snapshot-rollback",
    ),
]
