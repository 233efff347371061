"""Every approval rule, against the real database: ledger, balance, request and audit rows."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from approvals.errors import (
    AlreadyApproved,
    ApprovalExpired,
    ApprovalNotPending,
    ApprovalPendingExists,
    MakerCannotApprove,
    RoleNotRequired,
)
from approvals.models import Approval, ApprovalRequest
from approvals.services import (
    approval_approve,
    approval_reject,
    approval_request_create,
    approvals_expire,
)
from audit.models import AuditEntry
from loyalty.actors import system_actor
from loyalty.errors import ValidationFailed
from loyalty.models import LedgerEntry, MemberBalance
from tests.approvals.conftest import AUDITOR, FIN, FIN_1, FIN_2, OPS, OPS_2, OPS_MAKER
from tests.conftest import hold

pytestmark = pytest.mark.django_db


def adjustments() -> int:
    return LedgerEntry.objects.filter(type="manual_adjust").count()


def balance(program, member="u_1") -> Decimal:
    return MemberBalance.objects.get(program=program, member_id=member).points_balance


def actions(request) -> list[str]:
    return list(
        AuditEntry.objects.filter(entity_type="approval", entity_id=str(request.pk))
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_request_stores_validated_payload_and_changes_nothing(program, adjustment):
    request = adjustment(points="20000.5")
    request.refresh_from_db()
    assert request.status == "pending"
    assert request.payload["points"] == "20000.5"
    assert request.required_roles == ["ops_marketing", "finance_ops"]
    assert (request.maker_id, request.maker_role) == ("ops-maker", "ops_marketing")
    assert request.expires_at > timezone.now()
    assert adjustments() == 0
    assert balance(program) == Decimal("15000")
    assert actions(request) == ["approval.request"]


def test_invalid_payload_is_refused_and_nothing_is_stored(program, member):
    with pytest.raises(ValidationFailed):
        approval_request_create(
            operation="balance_adjustment", program=program, target="t", actor=OPS_MAKER,
            amount=Decimal(20000), payload={"program_id": str(program.pk), "points": "abc"},
        )  # fmt: skip
    assert ApprovalRequest.objects.count() == 0


def test_making_is_not_approving_and_last_approval_runs_the_stored_payload_once(
    program, adjustment
):
    request = adjustment()
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS, comment="ok")
    request.refresh_from_db()
    assert request.status == "pending"  # the ops maker did not count as ops approver
    assert adjustments() == 0
    approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
    request.refresh_from_db()
    assert request.status == "executed"
    entry = LedgerEntry.objects.get(type="manual_adjust")
    assert entry.points == Decimal("20000")
    assert entry.idempotency_key == "adj-1"
    assert entry.actor_id == "ops-maker"  # made in the maker's name
    assert balance(program) == Decimal("35000")
    assert request.result["transaction_id"] == str(entry.pk)
    assert request.decided_by == "fin-1"
    assert [(a.actor_id, a.role) for a in request.approvals.all()] == [
        ("ops-2", "ops_marketing"),
        ("fin-1", "finance_ops"),
    ]
    assert actions(request) == [
        "approval.request", "approval.approve", "approval.approve", "approval.execute",
    ]  # fmt: skip
    assert AuditEntry.objects.filter(action="transaction.manual_adjust").count() == 1
    with pytest.raises(ApprovalNotPending):
        approval_approve(request_id=request.pk, actor=FIN_2, roles=FIN)
    assert adjustments() == 1


def test_maker_cannot_approve_even_holding_every_role(program, adjustment):
    request = adjustment()
    with pytest.raises(MakerCannotApprove):
        approval_approve(request_id=request.pk, actor=OPS_MAKER, roles=OPS | FIN | {"system"})
    assert Approval.objects.count() == 0
    assert actions(request) == ["approval.request"]


def test_one_person_fills_one_role(program, adjustment):
    request = adjustment()
    both = OPS | FIN
    approval_approve(request_id=request.pk, actor=FIN_1, roles=both)
    with pytest.raises(AlreadyApproved):
        approval_approve(request_id=request.pk, actor=FIN_1, roles=both)
    request.refresh_from_db()
    assert request.status == "pending"
    assert Approval.objects.count() == 1
    assert adjustments() == 0


def test_a_filled_role_or_a_role_not_required_cannot_approve(program, adjustment):
    request = adjustment()
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    with pytest.raises(RoleNotRequired):
        approval_approve(request_id=request.pk, actor=AUDITOR, roles={"auditor"})
    third_ops = OPS_2.__class__(id="ops-3", role="ops_marketing")
    with pytest.raises(RoleNotRequired):
        approval_approve(request_id=request.pk, actor=third_ops, roles=OPS)
    assert Approval.objects.count() == 1
    assert adjustments() == 0


def test_second_pending_request_for_same_operation_and_target_is_refused(program, adjustment):
    first = adjustment()
    with pytest.raises(ApprovalPendingExists) as excinfo:
        adjustment(points="30000", key="adj-2")
    assert excinfo.value.http_status == 409
    assert excinfo.value.context["approval_request_id"] == str(first.pk)
    assert ApprovalRequest.objects.count() == 1
    approval_reject(request_id=first.pk, actor=FIN_1, roles=FIN, comment="duplicate")
    assert adjustment(points="30000", key="adj-2").status == "pending"  # free again


def test_rejection_needs_a_reason_and_a_rejected_request_never_runs(program, adjustment):
    request = adjustment()
    for blank in ("", "   "):
        with pytest.raises(ValidationFailed):
            approval_reject(request_id=request.pk, actor=FIN_1, roles=FIN, comment=blank)
    request.refresh_from_db()
    assert request.status == "pending"
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    approval_reject(request_id=request.pk, actor=FIN_1, roles=FIN, comment="no ticket")
    request.refresh_from_db()
    assert (request.status, request.reject_reason, request.decided_by) == (
        "rejected", "no ticket", "fin-1",
    )  # fmt: skip
    with pytest.raises(ApprovalNotPending):
        approval_approve(request_id=request.pk, actor=FIN_2, roles=FIN)
    assert adjustments() == 0
    assert actions(request)[-1] == "approval.reject"


def test_outsider_cannot_reject_but_maker_may_withdraw(program, adjustment):
    request = adjustment()
    with pytest.raises(RoleNotRequired):
        approval_reject(request_id=request.pk, actor=AUDITOR, roles={"auditor"}, comment="no")
    approval_reject(request_id=request.pk, actor=OPS_MAKER, roles=OPS, comment="typo")
    request.refresh_from_db()
    assert request.status == "rejected"


def test_expired_request_never_runs_and_the_job_records_it(program, adjustment):
    request = adjustment()
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    with time_machine.travel(request.expires_at + timedelta(seconds=1)):
        with pytest.raises(ApprovalExpired):
            approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
        assert approvals_expire(actor=system_actor("approval_expiry")) == 1
        assert approvals_expire(actor=system_actor("approval_expiry")) == 0
    request.refresh_from_db()
    assert request.status == "expired"
    with pytest.raises(ApprovalNotPending):
        approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
    assert adjustments() == 0
    assert actions(request)[-1] == "approval.expire"


def test_operation_whose_preconditions_changed_fails_cleanly_and_records_why(program, adjustment):
    request = adjustment(points="-14000")
    # Meanwhile the member's points are held by a redemption: the debit no longer fits.

    hold(program, "5000", OPS_2, key="r1")
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
    request.refresh_from_db()
    assert request.status == "failed"
    assert request.error_code == "insufficient_points"
    assert request.result["error"]["code"] == "insufficient_points"
    assert adjustments() == 0
    assert balance(program) == Decimal("15000")
    assert request.approvals.count() == 2  # the decisions stay recorded
    assert actions(request)[-1] == "approval.fail"


def test_a_request_past_its_expiry_gives_way_to_a_new_one_for_the_same_target(adjustment):
    first = adjustment(points="20000", key="adj-1")
    with time_machine.travel(first.expires_at + timedelta(minutes=1)):
        second = adjustment(points="20000", key="adj-2")
    first.refresh_from_db()
    assert first.status == ApprovalRequest.Status.EXPIRED
    assert second.status == ApprovalRequest.Status.PENDING
    assert AuditEntry.objects.filter(action="approval.expire", entity_id=str(first.pk)).exists()
