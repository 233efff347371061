"""/api/v1/ routes of the background jobs (manual triggers, job status, tier rollback)."""

from django.urls import path

from .jobs import TRIGGERS, JobDetailApi, TierRollbackApi, WorkerTriggerApi

urlpatterns = [
    *(
        path(f"workers/{kind}", WorkerTriggerApi.as_view(), {"kind": kind}, name=f"workers-{kind}")
        for kind in TRIGGERS
    ),
    path("jobs/<uuid:job_id>", JobDetailApi.as_view(), name="job"),
    path(
        "tier-snapshots/<int:snapshot_id>/rollback",
        TierRollbackApi.as_view(),
        name="tier-snapshot-rollback",
    ),
]
