"""The Celery application; configuration comes from Django settings (CELERY_* names)."""

from celery import Celery
from celery.signals import worker_process_init

from loyalty_project.collector import startup_objects_freeze
from loyalty_project.environment import environment_load

environment_load()

app = Celery("loyalty_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_process_init.connect
def _freeze_startup_objects(**_) -> None:
    """A worker process has Django, the app and its tasks loaded: out of the collector, as
    the web process does (a job's chunks and any event ingested here then cost less)."""
    startup_objects_freeze()
