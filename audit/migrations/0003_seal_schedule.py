"""Schedules the audit seal job in django-celery-beat's database scheduler (editable in the
admin): every minute, so at most about a minute of entries waits for its seal."""

from django.conf import settings
from django.db import migrations

NAME = "audit: seal the trail (every minute)"


def install(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="*", hour="*", day_of_week="*", day_of_month="*", month_of_year="*",
        timezone=getattr(settings, "CELERY_TIMEZONE", "UTC"),
    )
    PeriodicTask.objects.update_or_create(
        name=NAME, defaults={"task": "audit.seal", "crontab": crontab, "enabled": True}
    )


def uninstall(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("audit", "0002_tamper_evidence"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
