"""Celery tasks of the access app: thin wrappers over its services."""

from celery import shared_task

from .idempotency import idempotency_records_purge


@shared_task(name="access.idempotency_purge")
def idempotency_purge_task() -> int:
    return idempotency_records_purge()
