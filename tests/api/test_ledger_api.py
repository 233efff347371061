"""Events, batch, redemptions, vouchers, member reads, adjustments and freeze over HTTP:
the wire format, the ledger and balance behind it, and refusals that change nothing."""

from decimal import Decimal

import pytest

from audit.models import AuditEntry
from loyalty.models import LedgerEntry, MemberBalance, Redemption, Voucher
from loyalty.verify import ledger_verify

from .conftest import OTHER

pytestmark = pytest.mark.django_db


def event(program, **fields):
    body = {"program_id": str(program.pk), "member_id": "u_42", "type": "purchase",
            "amount": "12500", "currency": "XOF", "module": "eats", "reference": "order-991",
            "occurred_at": "2026-11-27T10:00:00Z", "metadata": {"channel": "app"}}  # fmt: skip
    body.update(fields)
    return body


def counts():
    return (
        LedgerEntry.objects.count(),
        Redemption.objects.count(),
        Voucher.objects.count(),
        AuditEntry.objects.count(),
    )


def test_purchase_answers_the_wire_format(api, own_program):
    response = api("system").post("/api/v1/events", event(own_program), key="order-991")
    assert response.status_code == 201
    body = response.json()
    assert body["points"] == "250.00"
    assert body["balance"] == {
        "points_balance": "250.00", "locked": "0.00", "available": "250.00", "tier": "basic"
    }  # fmt: skip
    assert body["breakdown"]["base_points"] == "250.00"
    assert body["breakdown"]["capped_by"] is None
    assert set(body["sira"]) == {"multiplier", "bonus_points", "reasons", "confidence"}
    entry = LedgerEntry.objects.get(pk=body["transaction_id"])
    assert (entry.points, entry.idempotency_key) == (Decimal("250.00"), "order-991")
    assert entry.metadata == {"channel": "app"}
    assert ledger_verify() == []


def test_refund_claws_back_in_proportion(api, own_program):
    client = api("system")
    client.post("/api/v1/events", event(own_program), key="p1")
    response = client.post(
        "/api/v1/events",
        event(own_program, type="refund", amount="6250", reference="refund-1",
              original_reference="order-991"),
        key="r1",
    )  # fmt: skip
    assert response.status_code == 201
    assert response.json()["points"] == "-125.00"
    assert MemberBalance.objects.get(member_id="u_42").points_balance == Decimal("125.00")


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"currency": "USD", "amount": "10"}, 422, "currency_mismatch"),
        ({"amount": "1e5"}, 400, "validation_error"),
        ({"amount": 12.5}, 400, "validation_error"),
        ({"amount": "-5"}, 400, "validation_error"),
        ({"occurred_at": "2026-11-27T10:00:00"}, 400, "validation_error"),
        ({"member_id": "u\u0000x"}, 400, "validation_error"),
        ({"metadata": {"k": "\u0000"}}, 400, "validation_error"),
        ({"metadata": []}, 400, "validation_error"),
        ({"type": "bogus"}, 400, "validation_error"),
        ({"type": {}}, 400, "validation_error"),
        ({"type": "referral", "amount": None}, 400, "validation_error"),
        ({"program_id": "00000000-0000-0000-0000-000000000000"}, 404, "not_found"),
    ],
    ids=["currency", "exponent", "float", "negative", "naive-time", "nul-member", "nul-meta",
         "meta-list", "type", "type-object", "referral-no-points", "unknown-program"],
)  # fmt: skip
def test_bad_events_are_refused_and_change_nothing(api, own_program, fields, status, code):
    before = counts()
    response = api("system").post("/api/v1/events", event(own_program, **fields))
    assert response.status_code == status, response.json()
    assert response.json()["code"] == code
    assert response["Content-Type"] == "application/problem+json"
    if status == 400:
        assert response.json()["errors"]
    assert counts() == before


def test_other_merchants_program_is_404(api, make_program):
    other = make_program(merchant_id=OTHER)
    before = counts()
    response = api("system").post("/api/v1/events", event(other))
    assert response.status_code == 404
    assert counts() == before


def test_frozen_member_is_refused(api, funded):
    client = api("system")
    assert client.post(f"/api/v1/programs/{funded.pk}/members/u_1/freeze",
                       {"reason": "chargeback"}).status_code == 200  # fmt: skip
    before = counts()
    response = client.post("/api/v1/events", event(funded, member_id="u_1"))
    assert (response.status_code, response.json()["code"]) == (422, "account_frozen")
    assert counts() == before
    client.post(f"/api/v1/programs/{funded.pk}/members/u_1/unfreeze", {})
    assert client.post("/api/v1/events", event(funded, member_id="u_1")).status_code == 201


def assert_gated(status: int, body: dict) -> None:
    """Waiting for approval: 202 with the request; never applied."""
    assert status == 202, body
    assert body["status"] == "pending"
    assert body["approval_request_id"]
    assert set(body["required_roles"]) >= {"ops_marketing", "finance_ops"}


def test_manual_adjust_over_threshold_needs_approval_on_every_path(api, funded):
    client = api("system")
    entries = LedgerEntry.objects.count()
    big = event(funded, type="manual_adjust", points="10000.01", reason="goodwill",
                amount=None, currency=None)  # fmt: skip
    response = client.post("/api/v1/events", big)
    assert_gated(response.status_code, response.json())
    batch = {"events": [{**big, "member_id": "u_43", "idempotency_key": "b1"}]}
    item = client.post("/api/v1/events/batch", batch).json()["results"][0]
    assert_gated(item["status"], item.get("body") or item.get("error"))
    response = client.post(
        f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
        {"points": "-10000.01", "reason": "correction"},
    )
    assert_gated(response.status_code, response.json())
    assert LedgerEntry.objects.count() == entries
    # At the threshold itself no approval is needed.
    response = client.post(
        f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
        {"points": "10000", "reason": "migration"},
    )
    assert response.status_code == 201


def test_small_adjustment_is_applied(api, funded):
    response = api("finance_ops").post(
        f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
        {"points": "-200", "reason": "duplicate award"},
    )
    assert response.status_code == 201
    assert response.json()["balance"]["points_balance"] == "1800.00"
    entry = LedgerEntry.objects.get(pk=response.json()["transaction_id"])
    assert (entry.type, entry.reason, entry.actor_role) == (
        "manual_adjust", "duplicate award", "finance_ops"
    )  # fmt: skip
    assert ledger_verify() == []


def test_batch_items_are_atomic_each_on_their_own(api, funded, make_program):
    other = make_program(merchant_id=OTHER)
    items = [
        {**event(funded, member_id="b1"), "idempotency_key": "b-1"},
        {**event(funded, member_id="b2", amount="oops"), "idempotency_key": "b-2"},
        {**event(other, member_id="b3"), "idempotency_key": "b-3"},
        {**event(funded, member_id="b4", currency="USD"), "idempotency_key": "b-4"},
        {**event(funded, member_id="b1", reference="order-2"), "idempotency_key": "b-1"},
        {**event(funded, member_id="b5"), "idempotency_key": "b-5"},
    ]
    response = api("system").post("/api/v1/events/batch", {"events": items})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == [201, 400, 404, 422, 422, 201]
    assert results[1]["error"]["errors"]["amount"]
    assert results[4]["error"]["code"] == "idempotency_key_reused"
    assert results[0]["body"]["points"] == "250.00"
    members = set(MemberBalance.objects.filter(entries__isnull=False).values_list(
        "member_id", flat=True))  # fmt: skip
    assert {"b1", "b5"} <= members
    assert not {"b2", "b3", "b4"} & members
    assert ledger_verify() == []


def test_batch_over_1000_is_400(api, funded):
    items = [{**event(funded, member_id=f"m{i}"), "idempotency_key": f"k{i}"}
             for i in range(1001)]  # fmt: skip
    response = api("system").post("/api/v1/events/batch", {"events": items})
    assert response.status_code == 400
    assert "events" in response.json()["errors"]
    assert LedgerEntry.objects.filter(balance__member_id="m0").count() == 0


def test_hold_capture_and_redeem(api, funded):
    client = api("system")
    hold = client.post(
        "/api/v1/redemptions",
        {"program_id": str(funded.pk), "member_id": "u_1", "points": "500",
         "reward_type": "discount", "capture": False},
    )  # fmt: skip
    assert hold.status_code == 201
    assert (hold.json()["status"], hold.json()["points"], hold.json()["voucher"]) == (
        "pending", "500.00", None
    )  # fmt: skip
    balance = client.get(f"/api/v1/programs/{funded.pk}/members/u_1").json()
    assert (balance["locked"], balance["available"]) == ("500.00", "1500.00")

    capture = client.post(f"/api/v1/redemptions/{hold.json()['id']}/capture")
    assert capture.status_code == 200
    voucher = capture.json()["voucher"]
    assert capture.json()["status"] == "completed"
    assert (voucher["type"], voucher["value"], voucher["currency"], voucher["status"]) == (
        "discount", "500.00", "XOF", "active"
    )  # fmt: skip
    assert client.get(f"/api/v1/vouchers/{voucher['code']}").json()["status"] == "active"

    redeemed = client.post(f"/api/v1/vouchers/{voucher['code']}/redeem")
    assert (redeemed.status_code, redeemed.json()["status"]) == (200, "redeemed")
    again = client.post(f"/api/v1/vouchers/{voucher['code']}/redeem")
    assert (again.status_code, again.json()["code"]) == (422, "voucher_not_redeemable")
    assert ledger_verify() == []


def test_release_unlocks_and_capture_after_release_is_409(api, pending_hold):
    client = api("system")
    release = client.post(f"/api/v1/redemptions/{pending_hold.pk}/release")
    assert (release.status_code, release.json()["status"]) == (200, "cancelled")
    balance = MemberBalance.objects.get(member_id="u_1")
    assert balance.locked == 0
    before = counts()
    capture = client.post(f"/api/v1/redemptions/{pending_hold.pk}/capture")
    assert (capture.status_code, capture.json()["code"]) == (409, "invalid_state")
    assert counts() == before


def test_hold_more_than_available_is_refused(api, funded):
    before = counts()
    response = api("system").post(
        "/api/v1/redemptions",
        {"program_id": str(funded.pk), "member_id": "u_1", "points": "2000.01",
         "reward_type": "discount"},
    )  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (422, "insufficient_points")
    assert response.json()["available"] == "2000.00"
    assert counts() == before


def test_other_merchant_sees_404_for_redemptions_and_vouchers(api, pending_hold, active_voucher):
    client = api("system", merchant_id=OTHER)
    before = counts()
    assert client.post(f"/api/v1/redemptions/{pending_hold.pk}/capture").status_code == 404
    assert client.post(f"/api/v1/redemptions/{pending_hold.pk}/release").status_code == 404
    assert client.get(f"/api/v1/vouchers/{active_voucher.code}").status_code == 404
    assert client.post(f"/api/v1/vouchers/{active_voucher.code}/redeem").status_code == 404
    assert client.get("/api/v1/vouchers").json()["results"] == []
    assert counts() == before


def test_transactions_are_paginated_by_cursor_and_filtered(api, funded):
    client = api("system")
    for i in range(5):
        client.post("/api/v1/events", event(funded, member_id="u_1", reference=f"o{i}"))
    url = f"/api/v1/programs/{funded.pk}/members/u_1/transactions"
    page = client.get(url, {"limit": 4}).json()
    assert len(page["results"]) == 4
    rest = client.get(page["next"]).json()
    ids = [e["transaction_id"] for e in page["results"] + rest["results"]]
    assert len(ids) == len(set(ids)) == 6  # the fixture's purchase plus five
    assert ids == sorted(ids, key=int, reverse=True)
    only = client.get(url, {"type": "redemption"}).json()["results"]
    assert only == []
    since = client.get(url, {"since": "2999-01-01T00:00:00Z"}).json()["results"]
    assert since == []
    bad = client.get(url, {"since": "yesterday"})
    assert bad.status_code == 400
    assert "since" in bad.json()["errors"]


def test_tier_history_and_unknown_member(api, funded):
    client = api("auditor")
    history = client.get(f"/api/v1/programs/{funded.pk}/members/u_1/tier-history")
    assert history.status_code == 200
    assert history.json()["results"] == []
    missing = client.get(f"/api/v1/programs/{funded.pk}/members/nobody")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_a_cursor_is_refused_on_another_list_or_with_other_filters(api, funded):
    from loyalty.actors import Actor
    from loyalty.services import event_ingest
    from tests.factories import PointsEventFactory

    from .conftest import OWN

    for _ in range(3):
        event = PointsEventFactory(member_id="u_1")
        event_ingest(program=funded, event=event, actor=Actor(id="ops", role="system"))
    client = api("system", merchant_id=OWN)
    history = f"/api/v1/programs/{funded.pk}/members/u_1/transactions"
    following = client.get(f"{history}?type=referral&limit=1").json()["next"]
    cursor = following.split("cursor=")[1].split("&")[0]
    assert client.get(f"{history}?type=referral&limit=1&cursor={cursor}").status_code == 200
    for elsewhere in (f"{history}?type=purchase&cursor={cursor}",
                      f"/api/v1/programs/{funded.pk}/members/u_1/tier-history?cursor={cursor}",
                      f"/api/v1/vouchers?cursor={cursor}"):  # fmt: skip
        response = client.get(elsewhere)
        assert (response.status_code, response.json()["code"]) == (400, "invalid_cursor")


def test_transactions_of_several_types_and_a_filter_given_twice(api, funded):
    """`type` repeats (entries of any of those types); a one-value filter given twice is a
    400, not its last value read silently."""
    from loyalty.actors import Actor
    from loyalty.services import event_ingest
    from tests.factories import PointsEventFactory

    event_ingest(
        program=funded,
        event=PointsEventFactory(member_id="u_1"),
        actor=Actor(id="o", role="system"),
    )
    client = api("auditor")
    history = f"/api/v1/programs/{funded.pk}/members/u_1/transactions"
    kinds = {e["type"] for e in client.get(history).json()["results"]}
    assert {"purchase", "referral"} <= kinds
    both = client.get(f"{history}?type=purchase&type=referral").json()["results"]
    assert {e["type"] for e in both} == {"purchase", "referral"}
    only = client.get(f"{history}?type=referral").json()["results"]
    assert {e["type"] for e in only} == {"referral"}
    twice = client.get(f"{history}?since=2020-01-01T00:00:00Z&since=2030-01-01T00:00:00Z")
    assert (twice.status_code, twice.json()["code"]) == (400, "validation_error")
    assert "since" in twice.json()["errors"]
    assert twice.json()["detail"] == "The request has invalid fields; see `errors`."
    unknown = client.get(f"{history}?type=purchase&type=nope")
    assert (unknown.status_code, list(unknown.json()["errors"])) == (400, ["type"])
