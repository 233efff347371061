"""The approvals queue in the ops console: confirmation page, maker not approvable, rules
enforced by the services, and finance editing policies (audited)."""

from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import ApprovalPolicy, ApprovalRequest
from audit.models import AuditEntry
from loyalty.actors import Actor
from loyalty.models import LedgerEntry, MemberBalance
from tests.conftest import logged_in, make_user

pytestmark = pytest.mark.django_db
QUEUE = "admin:approvals_approvalrequest_changelist"


@pytest.fixture
def staff():
    def make(name: str, *roles: str) -> tuple[Client, Actor]:
        user = make_user(name, *roles)
        return logged_in(user), Actor(id=f"user:{user.pk}", role=roles[0])

    return make


def act(client, action, request, **extra):
    return client.post(reverse(QUEUE), {"action": action, "_selected_action": [request.pk],
                                        **extra})  # fmt: skip


def test_queue_shows_pending_and_marks_the_makers_own_request(staff, adjustment):
    maker_client, maker = staff("maker", "ops_marketing")
    own = adjustment(maker=maker)
    page = maker_client.get(reverse(QUEUE))
    assert page.status_code == 200
    assert [r.pk for r in page.context["cl"].result_list] == [own.pk]
    assert b"your own request: not approvable by you" in page.content
    other_client, _ = staff("fin", "finance_ops")
    assert b"you may approve" in other_client.get(reverse(QUEUE)).content


def test_approve_goes_through_a_confirmation_page_then_the_service(staff, adjustment):
    _, maker = staff("maker", "ops_marketing")
    request = adjustment(maker=maker)
    ops_client, _ = staff("ops2", "ops_marketing")
    confirm = act(ops_client, "approve_selected", request)
    assert confirm.status_code == 200
    assert b"goodwill after outage" in confirm.content  # the stored payload
    assert b"user:" in confirm.content
    assert b"ops_marketing" in confirm.content
    assert request.approvals.count() == 0  # nothing decided before confirming
    act(ops_client, "approve_selected", request, confirm="yes", comment="ok")
    assert request.approvals.get().role == "ops_marketing"

    fin_client, _ = staff("fin", "finance_ops")
    confirm = act(fin_client, "approve_selected", request)
    assert b"ops_marketing" in confirm.content  # approvals so far are shown
    act(fin_client, "approve_selected", request, confirm="yes")
    request.refresh_from_db()
    assert request.status == "executed"
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 1


def test_maker_approving_in_the_admin_is_refused(staff, adjustment):
    maker_client, maker = staff("maker", "ops_marketing", "finance_ops")
    request = adjustment(maker=maker)
    response = act(maker_client, "approve_selected", request, confirm="yes")
    assert response.status_code == 302
    assert request.approvals.count() == 0
    messages = [str(m) for m in response.wsgi_request._messages]
    assert any("maker_cannot_approve" in m for m in messages)


def test_reject_in_the_admin_needs_a_reason(staff, adjustment):
    _, maker = staff("maker", "ops_marketing")
    request = adjustment(maker=maker)
    fin_client, _ = staff("fin", "finance_ops")
    page = act(fin_client, "reject_selected", request, confirm="yes", comment="")
    assert page.status_code == 200  # the confirmation page again, with the form error
    request.refresh_from_db()
    assert request.status == "pending"
    act(fin_client, "reject_selected", request, confirm="yes", comment="no ticket")
    request.refresh_from_db()
    assert (request.status, request.reject_reason) == ("rejected", "no ticket")


def test_auditor_sees_the_queue_but_cannot_decide(staff, adjustment):
    request = adjustment()
    client, _ = staff("aud", "auditor")
    page = client.get(reverse(QUEUE))
    assert page.status_code == 200
    assert "approve_selected" not in page.context["cl"].model_admin.get_actions(page.wsgi_request)
    act(client, "approve_selected", request, confirm="yes")
    assert request.approvals.count() == 0


def test_finance_edits_a_policy_through_the_audited_service(staff):
    client, _ = staff("fin", "finance_ops")
    add = reverse("admin:approvals_approvalpolicy_add")
    bad = client.post(add, {"operation": "balance_adjustment", "enabled": "on",
                            "threshold": "500", "required_roles": '["nobody"]',
                            "ttl_hours": "24"})  # fmt: skip
    assert bad.status_code == 200
    assert ApprovalPolicy.objects.count() == 0
    roles = '["ops_marketing", "finance_ops"]'
    ok = client.post(add, {"operation": "balance_adjustment", "enabled": "on",
                           "threshold": "500", "required_roles": roles,
                           "ttl_hours": "24"})  # fmt: skip
    assert ok.status_code == 302
    policy = ApprovalPolicy.objects.get()
    assert (str(policy.threshold), policy.required_roles) == (
        "500.00", ["ops_marketing", "finance_ops"],
    )  # fmt: skip
    entry = AuditEntry.objects.get(action="approval_policy.update")
    assert entry.changes["after"]["threshold"] == "500"
    ops_client, _ = staff("ops", "ops_marketing")
    assert ops_client.post(add, {}).status_code == 403


def test_finance_cannot_loosen_a_policy_in_the_console_a_superuser_can(staff, admin_client):
    """A finance person disabling the adjustment policy, then adjusting alone: refused."""
    client, _ = staff("fin", "finance_ops")
    add = reverse("admin:approvals_approvalpolicy_add")
    disabled = {"operation": "balance_adjustment", "threshold": "10000", "ttl_hours": "72",
                "required_roles": '["ops_marketing", "finance_ops"]'}  # fmt: skip
    refused = client.post(add, disabled)  # "enabled" unticked
    assert refused.status_code == 200
    assert "platform administrator" in refused.content.decode()
    assert ApprovalPolicy.objects.count() == 0
    assert admin_client.post(add, disabled).status_code == 302
    assert ApprovalPolicy.objects.get().enabled is False


def test_console_suspension_waits_for_approval_like_the_api(staff, program):
    client, _ = staff("ops", "ops_marketing")
    client.post(reverse("admin:loyalty_program_changelist"),
                {"action": "suspend", "_selected_action": [program.pk]})  # fmt: skip
    program.refresh_from_db()
    assert program.status == "active"
    request = ApprovalRequest.objects.get(operation="program_suspend")
    assert request.payload == {"program_id": str(program.pk), "reason": "admin action"}
    again = client.post(reverse("admin:loyalty_program_changelist"),
                        {"action": "suspend", "_selected_action": [program.pk]})  # fmt: skip
    assert any("approval_pending_exists" in str(m) for m in again.wsgi_request._messages)
    assert ApprovalRequest.objects.count() == 1


@pytest.mark.usefixtures("member")
def test_console_freeze_waits_for_approval_when_the_policy_says_so(staff, program, settings):
    settings.LOYALTY_APPROVAL_FREEZE_REQUIRED = True
    client, _ = staff("fin", "finance_ops")
    balance = MemberBalance.objects.get(program=program, member_id="u_1")
    client.post(reverse("admin:loyalty_memberbalance_changelist"),
                {"action": "freeze", "_selected_action": [balance.pk]})  # fmt: skip
    balance.refresh_from_db()
    assert balance.is_frozen is False
    assert ApprovalRequest.objects.get().operation == "member_freeze"


def _budget_and_name_change(client, program):
    url = reverse("admin:loyalty_program_change", args=[program.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "sira_settings"}
    data.update({"budget_limit": "900000", "sira_settings": "{}", "name": "Renamed"})
    client.post(url, data)


def _approve_by_ops_and_finance(staff, request):
    ops_client, _ = staff("ops2", "ops_marketing")
    act(ops_client, "approve_selected", request, confirm="yes")
    fin_client, _ = staff("fin2", "finance_ops")
    act(fin_client, "approve_selected", request, confirm="yes")
    request.refresh_from_db()
    assert request.status == "executed"


def test_console_budget_change_waits_for_approval_then_runs_as_stored(staff, program):
    # A superuser may change both the budget and the rest of the program in one save.
    client = logged_in(make_user("root-maker", superuser=True))
    _budget_and_name_change(client, program)
    program.refresh_from_db()
    assert (program.budget_limit, program.name) == (None, "Test Rewards")
    request = ApprovalRequest.objects.get(operation="budget_change")
    assert request.payload["changes"]["name"] == "Renamed"
    _approve_by_ops_and_finance(staff, request)
    program.refresh_from_db()
    assert (program.budget_limit, program.name) == (Decimal("900000"), "Renamed")


def test_console_budget_change_by_finance_carries_only_the_budget(staff, program):
    """Finance changes the budget, not the rest of the program (`programs:write` is ops')."""
    client, _ = staff("fin-maker", "finance_ops")
    _budget_and_name_change(client, program)
    request = ApprovalRequest.objects.get(operation="budget_change")
    assert set(request.payload["changes"]) == {"budget_limit"}
    _approve_by_ops_and_finance(staff, request)
    program.refresh_from_db()
    assert (program.budget_limit, program.name) == (Decimal("900000"), "Test Rewards")
