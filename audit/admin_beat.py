"""Celery beat's schedules, changed in the admin, audited.

The schedules are rows (django_celery_beat's database scheduler), editable by superusers in
the admin: disabling one stops a job (the audit seal that makes the trail tamper-evident,
point expiry, hold expiry). Its stock admins write with no trace; these record every change,
deletion and action (enable, disable, toggle, run) with the row before and after."""

from django.contrib import admin
from django.db import transaction
from django_celery_beat import admin as beat_admin
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from access.selectors import staff_actor

from .services import audit_record

# What the scheduler itself writes on every run: not a change of the schedule.
_RUN_BOOKKEEPING = {"last_run_at", "total_run_count", "date_changed"}


def _state(row) -> dict:
    return {
        field.attname: None if value is None else str(value)
        for field in row._meta.concrete_fields
        if field.attname not in _RUN_BOOKKEEPING and not field.primary_key
        for value in [getattr(row, field.attname)]
    }


class _AuditedScheduleRows:
    entity_type = ""

    def _record(self, request, row_id, action: str, before=None, after=None) -> None:
        audit_record(
            actor=staff_actor(request.user, request),
            action=f"{self.entity_type}.{action}",
            entity_type=self.entity_type,
            entity_id=row_id,
            before=before,
            after=after,
        )

    def save_model(self, request, obj, form, change):
        before = _state(type(obj).objects.get(pk=obj.pk)) if change else None
        with transaction.atomic():
            super().save_model(request, obj, form, change)
            after = _state(obj)
            if before != after:
                self._record(request, obj.pk, "update" if change else "create", before, after)

    def delete_model(self, request, obj):
        self.delete_queryset(request, type(obj).objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for row in queryset:
                self._record(request, row.pk, "delete", before=_state(row))
            super().delete_queryset(request, queryset)


def _audited_action(name: str, verb: str):
    """The stock action `name`, with an entry per task it touched (before and after)."""
    stock = getattr(beat_admin.PeriodicTaskAdmin, name)

    @admin.action(description=stock.short_description)
    def action(self, request, queryset):
        with transaction.atomic():
            before = {task.pk: _state(task) for task in queryset}
            stock(self, request, queryset)
            for task in PeriodicTask.objects.filter(pk__in=before):
                self._record(request, task.pk, verb, before[task.pk], _state(task))

    action.__name__ = name
    return action


class AuditedPeriodicTaskAdmin(_AuditedScheduleRows, beat_admin.PeriodicTaskAdmin):
    entity_type = "periodic_task"
    enable_tasks = _audited_action("enable_tasks", "enable")
    disable_tasks = _audited_action("disable_tasks", "disable")
    toggle_tasks = _audited_action("toggle_tasks", "toggle")
    run_tasks = _audited_action("run_tasks", "run")


def _schedule_admin(stock, entity_type: str):
    return type(
        f"Audited{stock.__name__}",
        (_AuditedScheduleRows, stock),
        {"entity_type": entity_type, "__module__": __name__},
    )


_ADMINS = {
    PeriodicTask: AuditedPeriodicTaskAdmin,
    CrontabSchedule: _schedule_admin(beat_admin.CrontabScheduleAdmin, "crontab_schedule"),
    IntervalSchedule: _schedule_admin(beat_admin.IntervalScheduleAdmin, "interval_schedule"),
    SolarSchedule: _schedule_admin(beat_admin.SolarScheduleAdmin, "solar_schedule"),
    ClockedSchedule: _schedule_admin(beat_admin.ClockedScheduleAdmin, "clocked_schedule"),
}
for model, model_admin in _ADMINS.items():
    if admin.site.is_registered(model):
        admin.site.unregister(model)
    admin.site.register(model, model_admin)
