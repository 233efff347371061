"""Celery beat's schedules are editable in the admin: disabling, editing, running or deleting
one is a write like any, in the audit trail (the audit seal's own schedule included)."""

import pytest
from django.contrib.admin import helpers
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from audit.models import AuditEntry
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
User = get_user_model()
CHANGELIST = "admin:django_celery_beat_periodictask_changelist"


@pytest.fixture
def root() -> Client:
    client = Client()
    client.force_login(make_user("root", superuser=True))
    return client


def entries(task) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(entity_type="periodic_task", entity_id=str(task.pk)))


@pytest.mark.parametrize(("action", "enabled"), [("disable_tasks", False), ("toggle_tasks", False)])
def test_an_action_on_the_audit_seals_schedule_is_audited(root, action, enabled):
    task = PeriodicTask.objects.get(task="audit.seal")
    response = root.post(
        reverse(CHANGELIST), {"action": action, helpers.ACTION_CHECKBOX_NAME: [task.pk]}
    )
    assert response.status_code == 302
    task.refresh_from_db()
    assert task.enabled is enabled
    (entry,) = entries(task)
    assert entry.action == f"periodic_task.{action.removesuffix('_tasks')}"
    assert (entry.changes["before"]["enabled"], entry.changes["after"]["enabled"]) == (
        "True", str(enabled),
    )  # fmt: skip
    assert entry.actor_id == f"user:{User.objects.get(username='root').pk}"


def test_deleting_a_schedule_is_audited_with_what_it_was(root):
    task = PeriodicTask.objects.get(task="audit.seal")
    response = root.post(
        reverse("admin:django_celery_beat_periodictask_delete", args=[task.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not PeriodicTask.objects.filter(pk=task.pk).exists()
    (entry,) = entries(task)
    assert (entry.action, entry.changes["before"]["task"]) == ("periodic_task.delete", "audit.seal")


def test_a_schedule_added_in_the_admin_is_audited(root):
    response = root.post(
        reverse("admin:django_celery_beat_intervalschedule_add"),
        {
            "every": "17",
            "period": "seconds",  # and its (empty) inline of tasks
            "periodictask_set-TOTAL_FORMS": "0",
            "periodictask_set-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302
    interval = IntervalSchedule.objects.get(every=17, period="seconds")
    entry = AuditEntry.objects.get(entity_type="interval_schedule", entity_id=str(interval.pk))
    assert (entry.action, entry.changes["after"]["every"]) == ("interval_schedule.create", "17")
