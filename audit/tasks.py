"""Celery tasks of the audit trail (scheduled by celery beat; see the workers' schedule)."""

from celery import shared_task

from .services import audit_seal

# Seals per run at most, so one run stays short even after a long pause.
MAX_SEALS_PER_RUN = 20


@shared_task(name="audit.seal")
def audit_seal_task() -> int:
    """Seals what is sealable now; returns the number of seals written."""
    sealed = 0
    while sealed < MAX_SEALS_PER_RUN and audit_seal() is not None:
        sealed += 1
    return sealed
