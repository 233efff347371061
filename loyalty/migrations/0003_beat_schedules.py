"""Installs the loyalty workers' schedules into django-celery-beat's database scheduler, where
ops can edit them in the admin. Crontab times are in settings.CELERY_TIMEZONE."""

from django.conf import settings
from django.db import migrations

# name -> (task, crontab fields)
SCHEDULES = {
    "loyalty: tier evaluation (daily 02:00)": (
        "loyalty.tier_evaluation", {"minute": "0", "hour": "2"},
    ),
    "loyalty: point expiry (daily 03:00)": (
        "loyalty.point_expiry", {"minute": "0", "hour": "3"},
    ),
    "loyalty: campaign execution (hourly)": (
        "loyalty.campaign_execution", {"minute": "0", "hour": "*"},
    ),
    "loyalty: hold expiry (every 5 minutes)": (
        "loyalty.hold_expiry", {"minute": "*/5", "hour": "*"},
    ),
    "loyalty: approval expiry (every 5 minutes)": (
        "loyalty.approval_expiry", {"minute": "*/5", "hour": "*"},
    ),
}


def install(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    tz = getattr(settings, "CELERY_TIMEZONE", "UTC")
    for name, (task, fields) in SCHEDULES.items():
        crontab, _ = CrontabSchedule.objects.get_or_create(
            minute=fields["minute"],
            hour=fields["hour"],
            day_of_week="*",
            day_of_month="*",
            month_of_year="*",
            timezone=tz,
        )
        PeriodicTask.objects.update_or_create(
            name=name,
            defaults={"task": task, "crontab": crontab, "enabled": True},
        )


def uninstall(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=list(SCHEDULES)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("loyalty", "0002_tiersnapshot_qualifying_value"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(install, uninstall)]
