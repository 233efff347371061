"""An adjustment waiting for approval holds its ledger key: no other event takes it first,
on any path (a batch item, a single event whose request record is gone, another member's
adjustment), so the adjustment two people approved is written when they do. Once the request
is closed without running (rejected), the key is free again."""

from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from django.utils import timezone

from access.models import IdempotencyRecord
from approvals.models import ApprovalRequest
from loyalty.models import LedgerEntry, MemberBalance

from .test_api import big_adjust
from .test_batch_gate import batch, execute, keyed

pytestmark = pytest.mark.django_db


def purchase(program, member="u_1"):
    return {"program_id": str(program.pk), "member_id": member, "type": "purchase",
            "amount": "1000", "currency": program.currency}  # fmt: skip


def points(program, member="u_1") -> Decimal:
    return MemberBalance.objects.get(program=program, member_id=member).points_balance


def test_a_batch_item_cannot_take_the_key_of_a_pending_adjustment(api, funded):
    maker = api("system", sub="ops-maker")
    [gated] = batch(maker, keyed(big_adjust(funded), "A"))
    assert gated["status"] == 202
    before = points(funded)
    # Another batch, another request key: the purchase under the held key is refused.
    [item] = batch(maker, keyed(purchase(funded), "A"))
    assert item["status"] == 422
    assert item["error"]["code"] == "idempotency_key_reused"
    assert item["error"]["approval_request_id"] == gated["body"]["approval_request_id"]
    assert not LedgerEntry.objects.filter(idempotency_key="A").exists()
    assert points(funded) == before

    result = execute(api, gated["body"]["approval_request_id"])
    assert result["result"]["points"] == "10000.01"
    entry = LedgerEntry.objects.get(idempotency_key="A")
    assert entry.type == "manual_adjust"
    assert points(funded) == before + Decimal("10000.01")


def test_a_single_event_cannot_take_it_once_the_request_record_is_gone(api, funded):
    maker = api("system", sub="ops-maker")
    assert maker.post("/api/v1/events", big_adjust(funded), key="S").status_code == 202
    # The answer's record is kept 48 hours; the approval may wait longer (72 by default).
    IdempotencyRecord.objects.filter(key="S").delete()
    response = maker.post("/api/v1/events", purchase(funded), key="S")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert not LedgerEntry.objects.filter(idempotency_key="S").exists()


def test_another_members_adjustment_cannot_hold_the_same_key(api, funded):
    maker = api("system", sub="ops-maker")
    assert maker.post("/api/v1/events", big_adjust(funded), key="K").status_code == 202
    response = maker.post("/api/v1/events", big_adjust(funded, member="u_2"), key="K-other")
    assert response.status_code == 202  # its own key: fine
    [item] = batch(maker, keyed(big_adjust(funded, member="u_3"), "K"))
    assert item["status"] == 422
    assert item["error"]["code"] == "idempotency_key_reused"
    assert ApprovalRequest.objects.filter(status="pending").count() == 2


def test_a_small_adjustment_cannot_take_it_either(api, funded):
    maker = api("system", sub="ops-maker")
    [gated] = batch(maker, keyed(big_adjust(funded), "A"))
    assert gated["status"] == 202
    [item] = batch(maker, keyed(big_adjust(funded, points="5"), "A"))  # under the threshold
    assert item["status"] == 422
    assert not LedgerEntry.objects.filter(idempotency_key="A").exists()


def test_a_rejected_request_frees_the_key(api, funded):
    maker = api("system", sub="ops-maker")
    [gated] = batch(maker, keyed(big_adjust(funded), "A"))
    request_id = gated["body"]["approval_request_id"]
    response = api("finance_ops", sub="fin-1").post(
        f"/api/v1/approvals/{request_id}/reject", {"comment": "no"}
    )
    assert response.status_code == 200, response.json()
    [item] = batch(maker, keyed(purchase(funded), "A"))
    assert item["status"] == 201
    assert LedgerEntry.objects.get(idempotency_key="A").type == "purchase"


def test_requests_pending_before_the_upgrade_hold_their_keys(api, funded):
    from importlib import import_module

    from django.apps import apps

    migration = import_module("approvals.migrations.0003_ledger_key_held")
    maker = api("system", sub="ops-maker")
    for member, key in [("u_1", "old-1"), ("u_2", "old-2")]:
        assert maker.post("/api/v1/events", big_adjust(funded, member), key=key).status_code == 202
    ApprovalRequest.objects.update(ledger_key="")  # as stored before the field
    migration.pending_adjustments_hold_their_keys(apps, None)
    assert sorted(ApprovalRequest.objects.values_list("ledger_key", flat=True)) == [
        "old-1",
        "old-2",
    ]
    [item] = batch(maker, keyed(purchase(funded), "old-2"))
    assert item["status"] == 422


def test_a_request_past_its_expiry_holds_nothing(api, funded):
    maker = api("system", sub="ops-maker")
    assert batch(maker, keyed(big_adjust(funded), "O"))[0]["status"] == 202
    ApprovalRequest.objects.update(expires_at=timezone.now() - timedelta(hours=1))
    # Not closed yet (the expiry job's), but it can never run: the key is free.
    [item] = batch(maker, keyed(purchase(funded, member="u_5"), "O"))
    assert item["status"] == 201
    [other] = batch(maker, keyed(big_adjust(funded, member="u_9"), "O-2"))
    assert other["status"] == 202


def test_another_members_adjustment_takes_the_key_of_an_overdue_request(api, funded):
    maker = api("system", sub="ops-maker")
    [first] = batch(maker, keyed(big_adjust(funded), "O"))
    ApprovalRequest.objects.update(expires_at=timezone.now() - timedelta(hours=1))
    [second] = batch(maker, keyed(big_adjust(funded, member="u_9"), "O"))
    assert second["status"] == 202
    statuses = dict(ApprovalRequest.objects.values_list("pk", "status"))
    assert statuses[UUID(first["body"]["approval_request_id"])] == "expired"
    assert statuses[UUID(second["body"]["approval_request_id"])] == "pending"


def test_a_refund_of_an_unknown_member_under_a_held_key_is_the_keys_refusal(make_program):
    from approvals.services import approval_request_create
    from loyalty.errors import IdempotencyKeyReused
    from loyalty.services.batch import events_ingest_batch
    from tests.approvals.conftest import OPS_MAKER
    from tests.factories import RefundFactory

    program = make_program()
    request = approval_request_create(
        operation="balance_adjustment", program=program, target=f"balance:{program.pk}:x",
        payload={"program_id": str(program.pk), "member_id": "x", "points": "20000",
                 "reason": "r", "idempotency_key": "HELD"},
        actor=OPS_MAKER, amount=Decimal("20000"),
    )  # fmt: skip
    refund = RefundFactory(member_id="ghost", original_reference="o9", idempotency_key="HELD")
    [answer] = events_ingest_batch(items=[(program, refund)], actor=OPS_MAKER)
    assert isinstance(answer, IdempotencyKeyReused)  # as one by one, not original_not_found
    assert answer.context["approval_request_id"] == str(request.pk)
