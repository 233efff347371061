"""Each registered operation runs through approval; policies come from the database."""

from datetime import datetime
from decimal import Decimal

import pytest
import time_machine
from django.test import override_settings

from approvals.models import ApprovalPolicy
from approvals.registry import policy_get
from approvals.services import approval_approve, approval_policy_update, approval_request_create
from audit.models import AuditEntry
from loyalty.errors import ValidationFailed
from loyalty.models import MemberBalance, Program
from tests.approvals.conftest import FIN, FIN_1, OPS, OPS_2, OPS_MAKER

pytestmark = pytest.mark.django_db


def approve_fully(request):
    approval_approve(request_id=request.pk, actor=OPS_2, roles=OPS)
    approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
    request.refresh_from_db()
    return request


def make(program, operation, payload, target, amount=None):
    return approval_request_create(
        operation=operation, program=program, target=target, payload=payload,
        actor=OPS_MAKER, amount=amount,
    )  # fmt: skip


def test_budget_change_runs_the_stored_limit(program):
    request = make(program, "budget_change",
                   {"program_id": str(program.pk), "budget_limit": "2500000"},
                   f"program:{program.pk}", amount=Decimal("2500000"))  # fmt: skip
    assert Program.objects.get(pk=program.pk).budget_limit is None
    request = approve_fully(request)
    assert request.status == "executed"
    assert Program.objects.get(pk=program.pk).budget_limit == Decimal("2500000")
    assert AuditEntry.objects.filter(action="program.update", entity_id=str(program.pk)).exists()


def test_budget_change_runs_the_whole_stored_program_update(program):
    changes = {
        "budget_limit": "900000", "earn_rate": "0.05", "expiry_days": 30,
        "tiers": [{"name": "basic", "min_points": "0", "min_spend": "0", "earn_multiplier": "1"},
                  {"name": "vip", "min_points": "20000", "min_spend": "0",
                   "earn_multiplier": "1.5"},
                  {"name": "plus", "min_points": "5000", "min_spend": "0",
                   "earn_multiplier": "1.2"}],
    }  # fmt: skip
    request = make(program, "budget_change", {"program_id": str(program.pk), "changes": changes},
                   f"program:{program.pk}", amount=Decimal("900000"))  # fmt: skip
    assert approve_fully(request).status == "executed"
    program = Program.objects.get(pk=program.pk)
    assert (program.budget_limit, program.earn_rate, program.expiry_days) == (
        Decimal("900000"), Decimal("0.05"), 30,
    )  # fmt: skip
    assert list(program.tiers.order_by("rank").values_list("name", flat=True)) == [
        "basic", "plus", "vip",
    ]  # fmt: skip


def test_budget_change_payload_with_other_fields_only_is_refused(program):
    with pytest.raises(ValidationFailed):
        make(program, "budget_change", {"program_id": str(program.pk), "changes": {"name": "x"}},
             f"program:{program.pk}")  # fmt: skip


def test_program_suspension_runs_after_approval(program):
    request = make(program, "program_suspend", {"program_id": str(program.pk), "reason": "fraud"},
                   f"program:{program.pk}")  # fmt: skip
    assert Program.objects.get(pk=program.pk).status == "active"
    assert approve_fully(request).result == {"program_id": str(program.pk), "status": "suspended"}
    assert Program.objects.get(pk=program.pk).status == "suspended"


def test_member_freeze_runs_after_approval(program, member):
    request = make(program, "member_freeze",
                   {"program_id": str(program.pk), "member_id": member, "reason": "chargebacks"},
                   f"balance:{program.pk}:{member}")  # fmt: skip
    assert approve_fully(request).status == "executed"
    assert MemberBalance.objects.get(program=program, member_id=member).is_frozen


def test_freeze_of_unknown_member_fails_with_not_found(program):
    request = make(program, "member_freeze",
                   {"program_id": str(program.pk), "member_id": "ghost", "reason": "x"},
                   f"balance:{program.pk}:ghost")  # fmt: skip
    request = approve_fully(request)
    assert (request.status, request.error_code) == ("failed", "not_found")


@override_settings(LOYALTY_APPROVAL_FREEZE_REQUIRED=False)
def test_policy_defaults_from_settings_and_database_override_is_audited():
    assert policy_get("balance_adjustment").needs_approval(Decimal("10000")) is False
    assert policy_get("balance_adjustment").needs_approval(Decimal("-10000.01")) is True
    assert policy_get("member_freeze").needs_approval(None) is False
    assert policy_get("program_suspend").needs_approval(None) is True
    approval_policy_update(
        operation="balance_adjustment", actor=FIN_1, enabled=True, threshold=Decimal("500"),
        required_roles=["finance_ops"], ttl_hours=24, may_loosen=True,
    )  # fmt: skip
    policy = policy_get("balance_adjustment")
    assert policy.needs_approval(Decimal("501"))
    assert not policy.needs_approval(Decimal("500"))
    assert policy.required_roles == ("finance_ops",)
    entry = AuditEntry.objects.get(action="approval_policy.update")
    assert entry.changes["before"]["threshold"] == "10000"
    assert entry.changes["after"]["threshold"] == "500"
    assert entry.actor_id == "fin-1"


def test_invalid_policy_is_refused_and_nothing_changes():
    with pytest.raises(ValidationFailed):
        approval_policy_update(
            operation="balance_adjustment", actor=FIN_1, enabled=True, threshold=Decimal("-1"),
            required_roles=["nobody"], ttl_hours=0,
        )  # fmt: skip
    assert ApprovalPolicy.objects.count() == 0
    assert not AuditEntry.objects.filter(action="approval_policy.update").exists()


@pytest.mark.parametrize(
    "change",
    [{"enabled": False}, {"threshold": Decimal("10000.01")}, {"required_roles": ["finance_ops"]},
     {"required_roles": ["ops_marketing", "system"]}],
    ids=["disable", "raise-threshold", "drop-a-role", "a-machine-role"],
)  # fmt: skip
def test_one_finance_person_cannot_loosen_a_policy(change):
    """Otherwise one person switches off the control that needs two, then acts alone."""
    policy = {"enabled": True, "threshold": Decimal("10000"),
              "required_roles": ["ops_marketing", "finance_ops"], "ttl_hours": 72}  # fmt: skip
    with pytest.raises(ValidationFailed) as refused:
        approval_policy_update(operation="balance_adjustment", actor=FIN_1, **{**policy, **change})
    assert set(refused.value.errors) == set(change)
    assert ApprovalPolicy.objects.count() == 0
    assert policy_get("balance_adjustment").needs_approval(Decimal("10000.01"))
    # Tightening is theirs: a lower threshold, a shorter time to live.
    approval_policy_update(operation="balance_adjustment", actor=FIN_1,
                           **{**policy, "threshold": Decimal("500"), "ttl_hours": 24})  # fmt: skip
    assert policy_get("balance_adjustment").needs_approval(Decimal("501"))


def test_a_platform_administrator_may_loosen_a_policy_but_not_name_a_machine_role():
    approval_policy_update(
        operation="balance_adjustment", actor=FIN_1, enabled=False, threshold=None,
        required_roles=["finance_ops"], ttl_hours=72, may_loosen=True,
    )  # fmt: skip
    assert not policy_get("balance_adjustment").needs_approval(Decimal("1000000"))
    with pytest.raises(ValidationFailed):
        approval_policy_update(
            operation="balance_adjustment", actor=FIN_1, enabled=True, threshold=None,
            required_roles=["system"], ttl_hours=72, may_loosen=True,
        )  # fmt: skip


def test_finance_may_tighten_a_policy_that_names_the_old_system_role():
    """`system` was once accepted as a required role: dropping it loosens nothing (no person
    held it), so finance can still edit such a policy."""
    ApprovalPolicy.objects.create(
        operation="balance_adjustment", enabled=True, threshold=Decimal("10000"), ttl_hours=72,
        required_roles=["ops_marketing", "finance_ops", "system"],
    )  # fmt: skip
    approval_policy_update(
        operation="balance_adjustment", actor=FIN_1, enabled=True, threshold=Decimal("5000"),
        required_roles=["ops_marketing", "finance_ops"], ttl_hours=72,
    )  # fmt: skip
    assert policy_get("balance_adjustment").required_roles == ("ops_marketing", "finance_ops")


def test_request_uses_the_policy_roles_at_creation(program, member, adjustment):
    approval_policy_update(
        operation="balance_adjustment", actor=FIN_1, enabled=True, threshold=Decimal("100"),
        required_roles=["finance_ops"], ttl_hours=1, may_loosen=True,
    )  # fmt: skip
    request = adjustment()
    assert request.required_roles == ["finance_ops"]
    approval_approve(request_id=request.pk, actor=FIN_1, roles=FIN)
    request.refresh_from_db()
    assert request.status == "executed"


def test_the_executed_change_is_audited_as_the_maker_asked_for_it(program, adjustment):
    """In the maker's name, from the maker's own address, client and credential: not the
    maker's name with the last approver's address (two people in one entry)."""
    from loyalty.actors import Actor

    maker = Actor(id="ops-maker", role="ops_marketing", ip="10.0.0.1",
                  user_agent="maker-console", credential_id="jwt:maker")  # fmt: skip
    request = adjustment(maker=maker)
    approval_approve(request_id=request.pk, roles=OPS, actor=Actor(
        id="ops-2", role="ops_marketing", ip="10.9.9.9", user_agent="ops-console"))  # fmt: skip
    approval_approve(request_id=request.pk, roles=FIN, actor=Actor(
        id="fin-1", role="finance_ops", ip="10.8.8.8", user_agent="fin-console"))  # fmt: skip
    change = AuditEntry.objects.get(action="transaction.manual_adjust")
    assert (change.actor_id, change.ip, change.user_agent, change.credential_id) == (
        "ops-maker", "10.0.0.1", "maker-console", "jwt:maker",
    )  # fmt: skip
    executed = AuditEntry.objects.get(action="approval.execute")
    assert (executed.actor_id, executed.ip) == ("fin-1", "10.8.8.8")


def test_budget_change_with_a_review_date_passed_before_approval_fails(program):
    """Filed with the program's today as its tier review date, approved the day after: the
    date is now in the past, so the change is refused whole, as the API would refuse it."""
    changes = {"budget_limit": "900000", "tier_cycle_date": "2026-11-28"}
    with time_machine.travel(datetime.fromisoformat("2026-11-28T20:00:00+00:00"), tick=False):
        payload = {"program_id": str(program.pk), "changes": changes}
        request = make(
            program, "budget_change", payload, f"program:{program.pk}", amount=Decimal("900000")
        )
    with time_machine.travel(datetime.fromisoformat("2026-11-29T09:00:00+00:00"), tick=False):
        request = approve_fully(request)
    assert (request.status, request.error_code) == ("failed", "validation_error")
    program = Program.objects.get(pk=program.pk)
    assert (program.budget_limit, program.tier_cycle_date) == (None, None)


def test_a_budget_change_whose_tiers_no_longer_fit_fails_with_the_reason(program):
    changes = {
        "budget_limit": "900000",
        "tiers": [{"name": "basic", "min_points": "0"}, {"name": "vip", "min_points": "1000"}],
    }
    request = make(program, "budget_change", {"program_id": str(program.pk), "changes": changes},
                   f"program:{program.pk}", amount=Decimal("900000"))  # fmt: skip
    # Before the last approval a member reaches silver, which the new tiers drop.
    MemberBalance.objects.create(program=program, member_id="u_s", tier="silver")
    request = approve_fully(request)
    assert request.status == "failed"
    assert request.error_code == "validation_error"
    assert "silver" in str(request.result["error"]["errors"]["tiers"])
    assert Program.objects.get(pk=program.pk).budget_limit is None  # nothing of it ran
