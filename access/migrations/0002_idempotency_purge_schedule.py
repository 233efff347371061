"""Installs the hourly purge of expired idempotency records into django-celery-beat."""

from django.conf import settings
from django.db import migrations

NAME = "access: idempotency records purge (hourly)"


def install(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="17",
        hour="*",
        day_of_week="*",
        day_of_month="*",
        month_of_year="*",
        timezone=getattr(settings, "CELERY_TIMEZONE", "UTC"),
    )
    PeriodicTask.objects.update_or_create(
        name=NAME,
        defaults={"task": "access.idempotency_purge", "crontab": crontab, "enabled": True},
    )


def uninstall(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("access", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
