"""Ops console actions for the workers: run a job now for selected programs, roll back tier
changes. Imported by `loyalty/admin.py`:

    from .admin_jobs import JOB_ACTIONS, ROLLBACK_ACTIONS, JobActionsMixin, TierRollbackMixin

    class ProgramAdmin(JobActionsMixin, ServiceFormAdmin):
        actions = ["suspend", "reactivate", *JOB_ACTIONS]

    class TierSnapshotAdmin(TierRollbackMixin, ReadOnlyAdmin):
        actions = ROLLBACK_ACTIONS

Who may use them follows the API's permission map (access.permissions): `jobs:run` to trigger
a job, `members:adjust` to roll back a tier change, from the user's role groups.
"""

from django.contrib import admin

from .admin_actions import run_each
from .models import Job
from .roles import user_has_permission
from .services.jobs import job_enqueue
from .services.tiers import tier_rollback


def _allowed(request, permission: str) -> bool:
    return user_has_permission(request.user, permission)


def _actor(request):
    from .admin import request_actor  # loyalty.admin imports this module

    return request_actor(request)


class JobActionsMixin:
    def has_run_jobs_permission(self, request) -> bool:
        return _allowed(request, "jobs:run")


class TierRollbackMixin:
    def has_rollback_permission(self, request) -> bool:
        return _allowed(request, "members:adjust")


def _run(modeladmin, request, queryset, kind: str) -> None:
    actor = _actor(request)

    def enqueue(program):
        job = job_enqueue(kind=kind, program=program, actor=actor)
        return f"{program}: {job.kind} job {job.pk} is {job.status}."

    run_each(modeladmin, request, queryset, enqueue)


@admin.action(description="Run tier evaluation now", permissions=["run_jobs"])
def run_tier_evaluation(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, Job.Kind.TIER_EVALUATION)


@admin.action(description="Run point expiry now", permissions=["run_jobs"])
def run_point_expiry(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, Job.Kind.POINT_EXPIRY)


@admin.action(description="Run due campaigns now", permissions=["run_jobs"])
def run_campaign_execution(modeladmin, request, queryset):
    _run(modeladmin, request, queryset, Job.Kind.CAMPAIGN_EXECUTION)


@admin.action(description="Roll back the selected tier changes", permissions=["rollback"])
def rollback_tier_changes(modeladmin, request, queryset):
    actor = _actor(request)

    def roll_back(snapshot):
        rollback = tier_rollback(snapshot_id=snapshot.pk, actor=actor, reason="admin action")
        return f"#{snapshot.pk}: {rollback.balance.member_id} is {rollback.to_tier} again."

    # Newest first: a member's later change is rolled back before an earlier one.
    run_each(modeladmin, request, queryset.order_by("-id"), roll_back,
             name=lambda snapshot: f"#{snapshot.pk}")  # fmt: skip


JOB_ACTIONS = [run_tier_evaluation, run_point_expiry, run_campaign_execution]
ROLLBACK_ACTIONS = [rollback_tier_changes]
