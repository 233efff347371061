"""Admin actions follow the services' rules: a closed program stays closed, a refused operation
is an error message (never a 500, never an approval request), and lists cost a fixed number of
queries whatever their length."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

import audit.services
import loyalty.admin
from approvals.models import ApprovalRequest
from audit.models import AuditEntry
from loyalty.errors import InvalidState
from loyalty.models import Job, Program, Redemption
from loyalty.roles import roles_install
from loyalty.services import (
    event_ingest,
    program_set_status,
    redemption_capture,
    redemption_hold,
)
from loyalty.services.jobs import job_enqueue
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ops(client, db):
    groups = roles_install()
    user = get_user_model().objects.create_user(
        username="ops-user", password="pw-for-tests", is_staff=True
    )
    user.groups.set([groups["ops_marketing"]])
    client.force_login(user)
    return client


def _act(client, model: str, action: str, pks):
    return client.post(
        reverse(f"admin:loyalty_{model}_changelist"),
        {"action": action, "_selected_action": [str(pk) for pk in pks]},
        follow=True,
    )


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)] or [
        str(m) for m in response.context["messages"]
    ]


# --- 1. program status rule lives in the service ------------------------------------------


@pytest.mark.parametrize("status", ["active", "suspended"])
def test_service_refuses_to_leave_closed(program, actor, status):
    program_set_status(program_id=program.pk, status="closed", actor=actor)
    audits = AuditEntry.objects.count()
    with pytest.raises(InvalidState) as raised:
        program_set_status(program_id=program.pk, status=status, actor=actor)
    assert raised.value.context == {"status": "closed"}
    program.refresh_from_db()
    assert program.status == "closed"
    assert AuditEntry.objects.count() == audits


def test_service_unchanged_status_is_a_no_op(program, actor):
    program_set_status(program_id=program.pk, status="suspended", actor=actor)
    audits = AuditEntry.objects.count()
    again = program_set_status(program_id=program.pk, status="suspended", actor=actor)
    assert again.status == "suspended"
    assert AuditEntry.objects.count() == audits


def test_admin_reactivate_keeps_a_closed_program_closed(ops, program, actor):
    program_set_status(program_id=program.pk, status="closed", actor=actor)
    response = _act(ops, "program", "reactivate", [program.pk])
    assert response.status_code == 200
    program.refresh_from_db()
    assert program.status == "closed"
    assert any("invalid_state" in m for m in _messages(response))


def test_admin_suspend_of_a_closed_program_files_no_approval_request(ops, program, actor):
    program_set_status(program_id=program.pk, status="closed", actor=actor)
    response = _act(ops, "program", "suspend", [program.pk])
    assert response.status_code == 200
    assert not ApprovalRequest.objects.exists()
    program.refresh_from_db()
    assert program.status == "closed"
    assert any("invalid_state" in m for m in _messages(response))


def test_admin_suspend_of_an_active_program_still_waits_for_approval(ops, program):
    _act(ops, "program", "suspend", [program.pk])
    assert ApprovalRequest.objects.filter(operation="program_suspend").count() == 1
    program.refresh_from_db()
    assert program.status == "active"


# --- 2. a DomainError in an action is a message, never a 500 -------------------------------


def test_admin_release_of_a_hold_captured_meanwhile_is_an_error_message(
    ops, program, actor, monkeypatch
):
    event_ingest(
        program=program, event=PurchaseFactory(member_id="u1", amount=Decimal("10000")), actor=actor
    )
    held = redemption_hold(program=program, member_id="u1", points=Decimal("50"),
                           reward_type="discount", idempotency_key="h1", actor=actor)  # fmt: skip
    real_release = loyalty.admin.redemption_release

    def captured_meanwhile(*, redemption_id, actor):
        redemption_capture(redemption_id=redemption_id, actor=actor)
        return real_release(redemption_id=redemption_id, actor=actor)

    monkeypatch.setattr(loyalty.admin, "redemption_release", captured_meanwhile)
    user = get_user_model().objects.get(username="ops-user")
    user.is_superuser = True
    user.save(update_fields=["is_superuser"])
    response = _act(ops, "redemption", "release", [held.pk])
    assert response.status_code == 200
    held.refresh_from_db()
    assert held.status == Redemption.Status.COMPLETED
    assert any("invalid_state" in m for m in _messages(response))


# --- 3. changelists: the same number of queries for 1 row and for 5 -------------------------


def _changelist_queries(client, model: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse(f"admin:loyalty_{model}_changelist"))
    assert response.status_code == 200
    return len(queries)


def test_program_changelist_queries_do_not_grow_with_rows(admin_client, make_program, actor):
    first = make_program(name="P0", budget_limit=Decimal("1000"))
    event_ingest(program=first, event=PurchaseFactory(member_id="u1"), actor=actor)
    one = _changelist_queries(admin_client, "program")
    assert "200" in admin_client.get(reverse("admin:loyalty_program_changelist")).content.decode()
    for n in range(1, 5):
        make_program(name=f"P{n}", budget_limit=Decimal("1000"))
    assert _changelist_queries(admin_client, "program") == one


def test_job_changelist_queries_do_not_grow_with_rows(admin_client, make_program, actor):
    job_enqueue(kind=Job.Kind.TIER_EVALUATION, program=make_program(name="P0"), actor=actor)
    one = _changelist_queries(admin_client, "job")
    for n in range(1, 5):
        job_enqueue(kind=Job.Kind.TIER_EVALUATION, program=make_program(name=f"P{n}"),
                    actor=actor)  # fmt: skip
    assert Job.objects.count() == 5
    assert _changelist_queries(admin_client, "job") == one


# --- 4. dead code ---------------------------------------------------------------------------


def test_audit_record_many_is_gone():
    assert not hasattr(audit.services, "audit_record_many")


def test_program_status_values_are_the_three_the_rule_knows():
    assert set(Program.Status.values) == {"active", "suspended", "closed"}
