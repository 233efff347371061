"""A stored answer is replayed only to a caller who may make the request: the permissions a
handler checks on the body (a manual_adjust event needs members:adjust, a budget change
budgets:write) hold for a repeat of the key as for the first request."""

import pytest

from access.services import apikey_create
from loyalty.models import LedgerEntry

from .conftest import OWN, ApiClient

pytestmark = pytest.mark.django_db

CHECKOUT = ["programs:read", "members:read", "events:write", "redemptions:write"]


def key_client(actor, permissions, name) -> ApiClient:
    _, secret = apikey_create(merchant_id=OWN, name=name, permissions=permissions, actor=actor)
    return ApiClient(f"Api-Key {secret}")


def adjust(program, points="25"):
    return {"program_id": str(program.pk), "member_id": "u_1", "type": "manual_adjust",
            "points": points, "reason": "goodwill"}  # fmt: skip


def test_an_adjustment_event_is_not_replayed_to_a_key_without_members_adjust(funded, actor):
    staff = key_client(actor, [*CHECKOUT, "members:adjust"], "back office")
    checkout = key_client(actor, CHECKOUT, "checkout")
    first = staff.post("/api/v1/events", adjust(funded), key="adj-1")
    assert first.status_code == 201

    repeat = checkout.post("/api/v1/events", adjust(funded), key="adj-1")

    assert (repeat.status_code, repeat.json()["code"]) == (403, "permission_denied")
    assert repeat.json()["permission"] == "members:adjust"
    assert "Idempotent-Replayed" not in repeat.headers
    assert "balance" not in repeat.json()
    # The permitted caller still gets its replay, and nothing was written twice.
    again = staff.post("/api/v1/events", adjust(funded), key="adj-1")
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (201, "true")
    assert again.content == first.content
    assert LedgerEntry.objects.filter(idempotency_key="adj-1").count() == 1


def test_a_purchase_is_replayed_to_any_caller_of_the_merchant(funded, actor):
    first_key = key_client(actor, CHECKOUT, "till 1")
    other_key = key_client(actor, CHECKOUT, "till 2")
    body = {"program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
            "amount": "1000", "currency": funded.currency}  # fmt: skip
    first = first_key.post("/api/v1/events", body, key="p-1")
    repeat = other_key.post("/api/v1/events", body, key="p-1")
    assert first.status_code == 201
    assert (repeat.status_code, repeat.headers["Idempotent-Replayed"]) == (201, "true")
    assert repeat.content == first.content


def test_a_batch_with_an_adjustment_is_not_replayed_to_a_key_without_members_adjust(funded, actor):
    staff = key_client(actor, [*CHECKOUT, "members:adjust"], "back office")
    checkout = key_client(actor, CHECKOUT, "checkout")
    body = {"events": [{**adjust(funded), "idempotency_key": "item-1"}]}
    first = staff.post("/api/v1/events/batch", body, key="batch-1")
    assert first.json()["results"][0]["status"] == 201

    repeat = checkout.post("/api/v1/events/batch", body, key="batch-1")

    assert (repeat.status_code, repeat.json()["code"]) == (403, "permission_denied")
    assert "results" not in repeat.json()
    again = staff.post("/api/v1/events/batch", body, key="batch-1")
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")


@pytest.mark.parametrize(
    ("change", "permission"),
    [({"budget_limit": "900000"}, "budgets:write"), ({"earn_rate": "0.05"}, "programs:write")],
)
def test_a_program_change_is_not_replayed_to_a_key_without_its_permission(
    funded, actor, change, permission
):
    everything = ["programs:read", "programs:write", "budgets:write"]
    staff = key_client(actor, everything, "back office")
    lacking = key_client(actor, [p for p in everything if p != permission], "partial")
    url = f"/api/v1/programs/{funded.pk}"
    first = staff.patch(url, change, key="change-1")
    assert first.status_code in (200, 202)  # a large budget change waits for approval

    repeat = lacking.patch(url, change, key="change-1")

    assert (repeat.status_code, repeat.json()["code"]) == (403, "permission_denied")
    assert repeat.json()["permission"] == permission
    assert "Idempotent-Replayed" not in repeat.headers
    again = staff.patch(url, change, key="change-1")
    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (first.status_code, "true")
    assert again.content == first.content


def test_a_batch_whose_adjustments_were_refused_on_their_line_replays_to_its_sender(funded, actor):
    """The sender without members:adjust got its purchase's 201 and the adjustment's 403
    on their lines: its retry under the same key gets that answer back, as any retry."""
    checkout = key_client(actor, CHECKOUT, "checkout")
    purchase = {"program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
                "amount": "1000", "currency": funded.currency,
                "idempotency_key": "p-1"}  # fmt: skip
    body = {"events": [purchase, {**adjust(funded), "idempotency_key": "a-1"}]}
    first = checkout.post("/api/v1/events/batch", body, key="batch-1")
    assert [r["status"] for r in first.json()["results"]] == [201, 403]

    again = checkout.post("/api/v1/events/batch", body, key="batch-1")

    assert (again.status_code, again.headers["Idempotent-Replayed"]) == (200, "true")
    assert again.content == first.content
    assert LedgerEntry.objects.filter(idempotency_key="p-1").count() == 1
