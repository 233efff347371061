"""The approvals API and the approval gate on every path that reaches a gated operation."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from approvals.models import ApprovalRequest
from audit.models import AuditEntry
from loyalty.models import LedgerEntry, MemberBalance, Program
from tests.api.conftest import OTHER, OWN

pytestmark = pytest.mark.django_db


def big_adjust(program, member="u_1", points="10000.01"):
    return {"program_id": str(program.pk), "member_id": member, "type": "manual_adjust",
            "points": points, "reason": "goodwill"}  # fmt: skip


def adjustments() -> int:
    return LedgerEntry.objects.filter(type="manual_adjust").count()


def test_manual_adjust_over_threshold_waits_for_approval_on_every_path(api, funded):
    client = api("system", sub="ops-maker")
    response = client.post("/api/v1/events", big_adjust(funded, member="u_1"))
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["required_roles"] == ["ops_marketing", "finance_ops"]
    assert ApprovalRequest.objects.filter(pk=body["approval_request_id"]).exists()

    batch = {"events": [{**big_adjust(funded, member="u_2"), "idempotency_key": "b1"}]}
    item = client.post("/api/v1/events/batch", batch).json()["results"][0]
    assert (item["status"], item["body"]["status"]) == (202, "pending")

    ops = api("ops_marketing", sub="ops-maker")
    response = ops.post(f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
                           {"points": "-10000.01", "reason": "correction"})  # fmt: skip
    # u_1 already has a pending adjustment: one pending request per operation and target.
    assert (response.status_code, response.json()["code"]) == (409, "approval_pending_exists")
    assert ApprovalRequest.objects.count() == 2
    assert adjustments() == 0


def test_at_threshold_applies_at_once(api, funded):
    response = api("system").post("/api/v1/events", big_adjust(funded, points="10000"))
    assert response.status_code == 201
    assert ApprovalRequest.objects.count() == 0


def test_full_flow_over_the_api(api, funded):
    maker = api("system", sub="ops-maker")
    request_id = maker.post("/api/v1/events", big_adjust(funded)).json()["approval_request_id"]
    url = f"/api/v1/approvals/{request_id}"

    assert maker.get(url).json()["you"] == {"can_approve": False, "reason": "maker"}
    assert api("finance_ops", sub="fin-1").get(url).json()["you"] == {
        "can_approve": True, "reason": None,
    }  # fmt: skip
    response = maker.post(f"{url}/approve", {"comment": "mine"})
    assert (response.status_code, response.json()["code"]) == (403, "maker_cannot_approve")

    response = api("ops_marketing", sub="ops-2").post(f"{url}/approve", {"comment": "ok"})
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert response.json()["missing_roles"] == ["finance_ops"]

    response = api("finance_ops", sub="fin-1").post(f"{url}/approve", {})
    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "executed"
    assert [(a["actor_id"], a["role"]) for a in body["approvals"]] == [
        ("ops-2", "ops_marketing"), ("fin-1", "finance_ops"),
    ]  # fmt: skip
    assert body["result"]["points"] == "10000.01"
    assert MemberBalance.objects.get(member_id="u_1").points_balance == Decimal("12000.01")
    assert adjustments() == 1

    response = api("finance_ops", sub="fin-2").post(f"{url}/approve", {})
    assert (response.status_code, response.json()["code"]) == (409, "approval_not_pending")
    assert adjustments() == 1

    listed = api("auditor").get("/api/v1/approvals", {"status": "executed"}).json()
    assert [r["id"] for r in listed["results"]] == [request_id]
    assert AuditEntry.objects.filter(entity_type="approval", entity_id=request_id).count() == 4


def test_two_people_deciding_with_the_same_key_are_both_heard(api, funded):
    """Keys are kept per merchant, but a decision is its person's: a second approver sending
    the key the first used (a console deriving keys from the request id) must not get the
    first one's answer replayed, with the request still waiting for them."""
    maker = api("system", sub="ops-maker")
    request_id = maker.post("/api/v1/events", big_adjust(funded)).json()["approval_request_id"]
    url = f"/api/v1/approvals/{request_id}/approve"
    first = api("ops_marketing", sub="ops-2").post(url, {}, key=f"approve-{request_id}")
    assert first.json()["missing_roles"] == ["finance_ops"]
    second = api("finance_ops", sub="fin-1").post(url, {}, key=f"approve-{request_id}")
    assert second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["status"] == "executed"
    assert adjustments() == 1
    # Each person's own repeat is still a replay.
    again = api("finance_ops", sub="fin-1").post(url, {}, key=f"approve-{request_id}")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["status"] == "executed"
    assert adjustments() == 1


def test_a_persons_decision_key_replays_nothing_to_their_token_for_another_merchant(api, funded):
    maker = api("system", sub="ops-maker")
    request_id = maker.post("/api/v1/events", big_adjust(funded)).json()["approval_request_id"]
    url = f"/api/v1/approvals/{request_id}/approve"
    assert api("ops_marketing", sub="ops-2").post(url, {}, key="k1").status_code == 200
    elsewhere = api("ops_marketing", sub="ops-2", merchant_id=OTHER)
    assert elsewhere.post(url, {}, key="k1").status_code == 404
    assert elsewhere.post(url, {}, key="k2").status_code == 404


def test_reject_needs_a_reason_over_the_api(api, funded):
    maker = api("system", sub="ops-maker")
    request_id = maker.post("/api/v1/events", big_adjust(funded)).json()["approval_request_id"]
    fin = api("finance_ops", sub="fin-1")
    response = fin.post(f"/api/v1/approvals/{request_id}/reject", {})
    assert response.status_code == 400
    assert "comment" in response.json()["errors"]
    response = fin.post(f"/api/v1/approvals/{request_id}/reject", {"comment": "no ticket"})
    assert (response.status_code, response.json()["status"]) == (200, "rejected")
    assert response.json()["reject_reason"] == "no ticket"


def test_program_suspension_and_budget_change_are_gated(api, funded):
    ops = api("ops_marketing", sub="ops-maker")
    response = ops.post(f"/api/v1/programs/{funded.pk}/suspend", {"reason": "fraud wave"})
    assert response.status_code == 202
    assert Program.objects.get(pk=funded.pk).status == "active"
    fin = api("finance_ops", sub="fin-maker")
    response = fin.patch(f"/api/v1/programs/{funded.pk}", {"budget_limit": "900000"})
    assert response.status_code == 202
    assert Program.objects.get(pk=funded.pk).budget_limit is None
    request = ApprovalRequest.objects.get(operation="budget_change")
    assert Decimal(request.payload["changes"]["budget_limit"]) == Decimal("900000")


def test_other_merchants_requests_are_invisible(api, funded):
    request_id = (
        api("system", sub="ops-maker")
        .post("/api/v1/events", big_adjust(funded))
        .json()["approval_request_id"]
    )
    outsider = api("finance_ops", merchant_id=OTHER, sub="fin-x")
    assert outsider.get(f"/api/v1/approvals/{request_id}").status_code == 404
    assert outsider.post(f"/api/v1/approvals/{request_id}/approve", {}).status_code == 404
    assert outsider.get("/api/v1/approvals").json()["results"] == []
    assert (
        api("finance_ops", merchant_id=OWN).get(f"/api/v1/approvals/{request_id}").status_code
        == 200
    )


def test_roles_without_decide_permission_cannot_approve(api, funded):
    request_id = (
        api("system", sub="ops-maker")
        .post("/api/v1/events", big_adjust(funded))
        .json()["approval_request_id"]
    )
    response = api("auditor", sub="aud").post(f"/api/v1/approvals/{request_id}/approve", {})
    assert response.status_code == 403
    assert ApprovalRequest.objects.get(pk=request_id).approvals.count() == 0


def test_an_adjustment_with_a_key_of_255_characters_executes_once_approved(api, funded):
    # The ledger key is "adjustment:" and the Idempotency-Key: past the column's 255
    # characters, the final approval failed (400) and left the request pending for good.
    key = "a" * 254 + "z"
    maker = api("ops_marketing", sub="ops-maker")
    url = f"/api/v1/programs/{funded.pk}/members/u_1/adjustments"
    response = maker.post(url, {"points": "10000.01", "reason": "goodwill"}, key=key)
    assert response.status_code == 202, response.content
    request_id = response.json()["approval_request_id"]

    approve = f"/api/v1/approvals/{request_id}/approve"
    assert api("ops_marketing", sub="ops-2").post(approve, {}).status_code == 200
    response = api("finance_ops", sub="fin-1").post(approve, {})
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "executed"
    entry = LedgerEntry.objects.get(type="manual_adjust")
    assert len(entry.idempotency_key) <= 255
    assert entry.points == Decimal("10000.01")
    assert MemberBalance.objects.get(member_id="u_1").points_balance == Decimal("12000.01")

    # The member is not blocked: the next adjustment over the threshold waits for approval.
    response = maker.post(url, {"points": "10000.01", "reason": "again"}, key=key[:-1] + "y")
    assert response.status_code == 202, response.content


def test_a_request_past_its_time_is_shown_as_not_approvable(api, funded):
    """Until the expiry job records it, an expired request is still `pending`: the API (and
    the admin's "you" column, from the same rule) must not tell an approver they may
    approve what would then be refused."""
    maker = api("system", sub="ops-maker")
    request_id = maker.post("/api/v1/events", big_adjust(funded)).json()["approval_request_id"]
    ApprovalRequest.objects.filter(pk=request_id).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    approver = api("finance_ops", sub="fin-1")
    url = f"/api/v1/approvals/{request_id}"
    shown = approver.get(url).json()
    assert (shown["status"], shown["you"]) == (
        "pending", {"can_approve": False, "reason": "expired"},
    )  # fmt: skip
    response = approver.post(f"{url}/approve", {})
    assert (response.status_code, response.json()["code"]) == (409, "approval_expired")
    assert adjustments() == 0


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_decision_comment_with_control_characters_is_400_and_changes_nothing(
    api, funded, decision
):
    """The comment goes into the append-only audit log: it is text as every other text."""
    response = api("system").post("/api/v1/events", big_adjust(funded))
    request_id = response.json()["approval_request_id"]
    audit_before = AuditEntry.objects.count()
    checker = api("finance_ops", sub="fin-1")
    response = checker.post(
        f"/api/v1/approvals/{request_id}/{decision}", {"comment": "no\x1b[31m reason\x07"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "validation_error"
    assert "comment" in body["errors"]
    assert ApprovalRequest.objects.get(pk=request_id).status == "pending"
    assert not ApprovalRequest.objects.get(pk=request_id).approvals.exists()
    assert AuditEntry.objects.count() == audit_before
