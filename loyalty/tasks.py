"""Celery tasks: thin wrappers over services (ids in, one service call, nothing else).

Beat runs the `*_scheduled` tasks (schedules live in django-celery-beat's tables, installed by
migration `loyalty.0003_beat_schedules`); manual triggers create a job and send `job_run`.
"""

from celery import shared_task

from .models import Job
from .services.jobs import job_run, job_run_scheduled, jobs_reap_stale


@shared_task(name="loyalty.job_run", acks_late=True)
def job_run_task(job_id: str) -> str:
    return job_run(job_id=job_id).status


@shared_task(name="loyalty.jobs_reap_stale")
def jobs_reap_stale_task() -> int:
    """Marks failed the jobs whose worker died or whose task was lost; returns how many."""
    return jobs_reap_stale()


def _scheduled(kind: str) -> str | None:
    job = job_run_scheduled(kind=kind)
    return None if job is None else job.status


@shared_task(name="loyalty.tier_evaluation")
def tier_evaluation_task() -> str | None:
    return _scheduled(Job.Kind.TIER_EVALUATION)


@shared_task(name="loyalty.point_expiry")
def point_expiry_task() -> str | None:
    return _scheduled(Job.Kind.POINT_EXPIRY)


@shared_task(name="loyalty.campaign_execution")
def campaign_execution_task() -> str | None:
    return _scheduled(Job.Kind.CAMPAIGN_EXECUTION)


@shared_task(name="loyalty.hold_expiry")
def hold_expiry_task() -> str | None:
    return _scheduled(Job.Kind.HOLD_EXPIRY)


@shared_task(name="loyalty.approval_expiry")
def approval_expiry_task() -> str | None:
    return _scheduled(Job.Kind.APPROVAL_EXPIRY)
