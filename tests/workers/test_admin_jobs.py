"""Console actions of the workers: who may run a job or roll back a tier change, and what
the actions do."""

import pytest
from django.contrib import admin
from django.contrib.messages import get_messages
from django.contrib.messages.storage.fallback import FallbackStorage
from django.contrib.sessions.backends.db import SessionStore

from loyalty.admin import ProgramAdmin, TierSnapshotAdmin
from loyalty.admin_jobs import rollback_tier_changes, run_tier_evaluation
from loyalty.models import Job, Program, TierSnapshot
from tests.conftest import make_user
from tests.workers.conftest import member

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(rf):
    def make(role):
        user = make_user(f"{role}-staff", role)
        request = rf.post("/admin/")
        request.user = user
        request.session = SessionStore()
        request._messages = FallbackStorage(request)
        return request

    return make


def test_only_job_runners_see_the_trigger_actions(staff):
    program_admin = ProgramAdmin(Program, admin.site)
    assert "run_tier_evaluation" in program_admin.get_actions(staff("ops_marketing"))
    assert "run_tier_evaluation" not in program_admin.get_actions(staff("auditor"))
    snapshot_admin = TierSnapshotAdmin(TierSnapshot, admin.site)
    assert "rollback_tier_changes" in snapshot_admin.get_actions(staff("finance_ops"))
    assert "rollback_tier_changes" not in snapshot_admin.get_actions(staff("merchant_admin"))
    # `system` is the workers' role: a person in that group gets none of its permissions.
    person_in_system = staff("system")
    assert "run_tier_evaluation" not in program_admin.get_actions(person_in_system)
    assert "rollback_tier_changes" not in snapshot_admin.get_actions(person_in_system)


def test_trigger_and_rollback_actions(staff, program, earn, django_capture_on_commit_callbacks):
    earn(program, "u1", "1500")
    request = staff("ops_marketing")

    with django_capture_on_commit_callbacks(execute=True):
        run_tier_evaluation(ProgramAdmin(Program, admin.site), request,
                            Program.objects.filter(pk=program.pk))  # fmt: skip

    job = Job.objects.get()
    assert (job.kind, job.status, job.triggered_by) == ("tier_evaluation", "succeeded",
                                                        f"user:{request.user.pk}")  # fmt: skip
    assert member(program, "u1").tier == "silver"

    finance = staff("finance_ops")
    rollback_tier_changes(TierSnapshotAdmin(TierSnapshot, admin.site), finance,
                          TierSnapshot.objects.all())  # fmt: skip
    assert member(program, "u1").tier == "basic"
    rollback_tier_changes(TierSnapshotAdmin(TierSnapshot, admin.site), finance,
                          TierSnapshot.objects.filter(rollback_of__isnull=True))  # fmt: skip
    texts = [m.message for m in get_messages(finance)]
    assert "u1 is basic again" in texts[0]
    assert "invalid_state" in texts[1]
    assert TierSnapshot.objects.count() == 2
