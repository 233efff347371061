"""Installs the sweep of stale jobs into django-celery-beat: every 5 minutes, a queued or
running job whose heartbeat is older than LOYALTY_JOB_STALE_SECONDS (its worker died, or its
task was lost) is marked failed, so none stays "running" forever."""

from django.conf import settings
from django.db import migrations

NAME = "loyalty: stale job sweep (every 5 minutes)"


def install(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="*/5",
        hour="*",
        day_of_week="*",
        day_of_month="*",
        month_of_year="*",
        timezone=getattr(settings, "CELERY_TIMEZONE", "UTC"),
    )
    PeriodicTask.objects.update_or_create(
        name=NAME,
        defaults={"task": "loyalty.jobs_reap_stale", "crontab": crontab, "enabled": True},
    )


def uninstall(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("loyalty", "0007_budget_retry_function"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
