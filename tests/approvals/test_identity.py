"""One person, one actor across the API and the admin: a staff user linked to their Molam ID
subject can neither approve their own request nor fill two roles by switching channel."""

import pytest
from django.test import Client
from django.urls import reverse

from access.selectors import person_actor_ids
from access.services import staff_identity_link
from approvals.models import ApprovalRequest
from approvals.services import approval_reject
from audit.models import AuditEntry
from loyalty.actors import Actor, system_actor
from loyalty.models import LedgerEntry
from tests.conftest import logged_in, make_user

pytestmark = pytest.mark.django_db
QUEUE = "admin:approvals_approvalrequest_changelist"


@pytest.fixture
def staff():
    """`staff("alice_admin", "finance_ops", subject="alice")`: a logged-in staff client, the
    user linked to `subject` when given."""

    def make(name: str, *roles: str, subject: str | None = None) -> tuple[Client, object]:
        user = make_user(name, *roles)
        if subject is not None:
            staff_identity_link(user_id=user.pk, molam_subject=subject,
                                actor=system_actor("test"))  # fmt: skip
        return logged_in(user), user

    return make


def big_adjust(program, member="u_1", points="10000.01"):
    return {"program_id": str(program.pk), "member_id": member, "type": "manual_adjust",
            "points": points, "reason": "goodwill"}  # fmt: skip


def admin_decide(client, request_id, action="approve_selected", **extra):
    response = client.post(reverse(QUEUE), {"action": action, "_selected_action": [request_id],
                                            "confirm": "yes", **extra})  # fmt: skip
    return [str(m) for m in response.wsgi_request._messages]


def test_api_maker_cannot_approve_in_the_admin_when_linked(api, funded, staff):
    request_id = (
        api("system", sub="alice").post("/api/v1/events", big_adjust(funded))
        .json()["approval_request_id"]
    )  # fmt: skip
    client, _ = staff("alice_admin", "ops_marketing", "finance_ops", subject="alice")
    assert b"your own request: not approvable by you" in client.get(reverse(QUEUE)).content
    messages = admin_decide(client, request_id)
    assert any("maker_cannot_approve" in m for m in messages)
    request = ApprovalRequest.objects.get(pk=request_id)
    assert (request.status, request.approvals.count()) == ("pending", 0)


def test_admin_maker_cannot_approve_over_the_api_when_linked(api, funded, staff):
    client, _ = staff("alice_admin", "ops_marketing", subject="alice")
    client.post(reverse("admin:loyalty_program_changelist"),
                {"action": "suspend", "_selected_action": [funded.pk]})  # fmt: skip
    request = ApprovalRequest.objects.get(operation="program_suspend")
    assert (request.maker_id, request.maker_role) == ("alice", "ops_marketing")
    alice = api("finance_ops", sub="alice")
    url = f"/api/v1/approvals/{request.pk}"
    assert alice.get(url).json()["you"] == {"can_approve": False, "reason": "maker"}
    response = alice.post(f"{url}/approve", {})
    assert (response.status_code, response.json()["code"]) == (403, "maker_cannot_approve")
    assert request.approvals.count() == 0
    # The audit trail names the same person for the request made in the admin.
    entry = AuditEntry.objects.get(action="approval.request", entity_id=str(request.pk))
    assert entry.actor_id == "alice"


def test_one_person_cannot_fill_two_roles_through_both_channels(api, funded, staff):
    request_id = (
        api("system", sub="ops-maker").post("/api/v1/events", big_adjust(funded))
        .json()["approval_request_id"]
    )  # fmt: skip
    client, _ = staff("bob_admin", "ops_marketing", subject="bob")
    admin_decide(client, request_id, comment="ok")
    request = ApprovalRequest.objects.get(pk=request_id)
    assert [(a.actor_id, a.role) for a in request.approvals.all()] == [("bob", "ops_marketing")]

    bob = api("finance_ops", sub="bob")
    url = f"/api/v1/approvals/{request_id}"
    assert bob.get(url).json()["you"] == {"can_approve": False, "reason": "already_approved"}
    response = bob.post(f"{url}/approve", {})
    assert (response.status_code, response.json()["code"]) == (409, "already_approved")
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 0

    # A different person fills the role and the operation runs.
    response = api("finance_ops", sub="carol").post(f"{url}/approve", {})
    assert (response.status_code, response.json()["status"]) == (200, "executed")
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 1


def test_api_approver_then_admin_approval_by_the_same_person_is_refused(api, funded, staff):
    request_id = (
        api("system", sub="ops-maker").post("/api/v1/events", big_adjust(funded))
        .json()["approval_request_id"]
    )  # fmt: skip
    response = api("ops_marketing", sub="bob").post(f"/api/v1/approvals/{request_id}/approve")
    assert response.status_code == 200
    client, _ = staff("bob_admin", "finance_ops", subject="bob")
    messages = admin_decide(client, request_id)
    assert any("already_approved" in m for m in messages)
    assert ApprovalRequest.objects.get(pk=request_id).status == "pending"


def test_what_a_user_did_before_being_linked_still_counts_as_them(api, funded, staff):
    """Acting as `user:<pk>`, then linked: the old id is still the same person."""
    client, user = staff("dave_admin", "ops_marketing")
    request_id = (
        api("system", sub="ops-maker").post("/api/v1/events", big_adjust(funded))
        .json()["approval_request_id"]
    )  # fmt: skip
    admin_decide(client, request_id)
    assert ApprovalRequest.objects.get(pk=request_id).approvals.get().actor_id == f"user:{user.pk}"
    staff_identity_link(user_id=user.pk, molam_subject="dave", actor=system_actor("test"))
    assert person_actor_ids("dave") == {"dave", f"user:{user.pk}"}
    response = api("finance_ops", sub="dave").post(f"/api/v1/approvals/{request_id}/approve")
    assert (response.status_code, response.json()["code"]) == (409, "already_approved")


def test_a_maker_before_the_link_cannot_approve_after_it(adjustment, api, staff):
    _, user = staff("erin_admin", "ops_marketing")
    request = adjustment(maker=Actor(id=f"user:{user.pk}", role="ops_marketing"))
    staff_identity_link(user_id=user.pk, molam_subject="erin", actor=system_actor("test"))
    response = api("finance_ops", sub="erin", merchant_id=request.merchant_id).post(
        f"/api/v1/approvals/{request.pk}/approve"
    )
    assert (response.status_code, response.json()["code"]) == (403, "maker_cannot_approve")
    # Still the maker: they may withdraw it under either id, with no required role.
    withdrawn = approval_reject(request_id=request.pk, actor=Actor(id="erin", role="none"),
                                roles=set(), comment="withdrawn")  # fmt: skip
    assert withdrawn.status == "rejected"


def test_unlinked_staff_and_unlinked_tokens_are_unchanged(adjustment, api, staff):
    client, user = staff("frank_admin", "ops_marketing")
    request = adjustment()
    admin_decide(client, request.pk)
    assert request.approvals.get().actor_id == f"user:{user.pk}"
    assert person_actor_ids(f"user:{user.pk}") == {f"user:{user.pk}"}
    assert person_actor_ids("machine-client") == {"machine-client"}
    response = api("finance_ops", sub="machine-client", merchant_id=request.merchant_id).post(
        f"/api/v1/approvals/{request.pk}/approve"
    )
    assert (response.status_code, response.json()["status"]) == (200, "executed")
    assert [a.actor_id for a in request.approvals.all()] == [f"user:{user.pk}", "machine-client"]
