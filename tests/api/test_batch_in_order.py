"""A batch answers what its items sent one by one, in order, would answer, also when a gated
adjustment repeats the key of an item before it and needs that item's outcome: the items
before it go to the service first, those after it after (found by a review helper's
differential fuzz of batches against single events; both first tests failed before, the
held-back item then ran after every later item of the batch)."""

from decimal import Decimal

import pytest

from access.models import IdempotencyRecord

from .conftest import OWN
from .test_ledger_api import event

pytestmark = pytest.mark.django_db


def adjust(program_id: str, member: str, points: str, key: str) -> dict:
    return {"program_id": program_id, "member_id": member, "type": "manual_adjust",
            "points": points, "reason": "goodwill", "idempotency_key": key}  # fmt: skip


def purchase(program_id: str, member: str, amount: str, currency: str, key: str) -> dict:
    return {"program_id": program_id, "member_id": member, "type": "purchase",
            "amount": amount, "currency": currency, "reference": f"order-{member}-{key}",
            "idempotency_key": key}  # fmt: skip


def one_by_one(client, items: list[dict]) -> list[dict]:
    """Each item to POST /events, its key as the request's. A refused item's key is left
    free by a batch (docs/API.md), where POST /events keeps its refusal under the
    request's key: that record is dropped, so the next item with the key is heard."""
    answers = []
    for item in items:
        body = {k: v for k, v in item.items() if k != "idempotency_key"}
        response = client.post("/api/v1/events", body, key=item["idempotency_key"])
        answers.append({**response.json(), "status": response.status_code})
        IdempotencyRecord.objects.filter(response_status__gte=400).delete()
    return [(a["status"], a.get("code"), a.get("points")) for a in answers]


def batched(client, items: list[dict]) -> list[tuple]:
    results = client.post("/api/v1/events/batch", {"events": items}).json()["results"]
    return [
        (r["status"], r.get("error", {}).get("code"), r.get("body", {}).get("points"))
        for r in results
    ]


def test_an_item_after_a_held_back_adjustment_meets_the_budget_in_its_place(api, make_program):
    client = api("system")
    single, batch = (
        make_program(merchant_id=OWN, name=name, budget_limit=Decimal("100"))
        for name in ("single", "batch")
    )

    def items(program_id):
        return [
            adjust(program_id, "y", "15000", "adj-1"),  # y's pending request (202)
            purchase(program_id, "x", "1000", "USD", "K"),  # refused: K stays free
            adjust(program_id, "y", "10000.01", "K"),  # y has a pending request: 409
            purchase(program_id, "z", "1000", "XOF", "K"),  # takes K: 20 of the 100
            purchase(program_id, "w", "100000", "XOF", "L"),  # what is left: 80
        ]

    expected = [(202, None, None), (422, "currency_mismatch", None),
                (409, "approval_pending_exists", None), (201, None, "20.00"),
                (201, None, "80.00")]  # fmt: skip
    assert one_by_one(client, items(str(single.pk))) == expected
    assert batched(client, items(str(batch.pk))) == expected


def test_gated_adjustments_of_a_member_keep_their_order(api, make_program):
    client = api("system")
    single, batch = (make_program(merchant_id=OWN, name=name) for name in ("single", "batch"))

    def items(program_id):
        return [
            adjust(program_id, "m", "15000", "A"),  # m's pending request
            purchase(program_id, "x", "1000", "USD", "K"),  # refused: K stays free
            adjust(program_id, "m", "10000.01", "K"),  # m's request is pending: 409
            adjust(program_id, "n", "15000", "K"),  # n's pending request, holding K
            adjust(program_id, "n", "10000.01", "B"),  # n's request is pending: 409
        ]

    expected = [(202, None, None), (422, "currency_mismatch", None),
                (409, "approval_pending_exists", None), (202, None, None),
                (409, "approval_pending_exists", None)]  # fmt: skip
    assert one_by_one(client, items(str(single.pk))) == expected
    assert batched(client, items(str(batch.pk))) == expected


def test_another_event_on_a_pending_key_names_the_request_in_the_batch_and_after(api, funded):
    client = api("system")
    other = {**event(funded, member_id="u_2", reference="o-1"), "idempotency_key": "K"}
    same = client.post(
        "/api/v1/events/batch", {"events": [adjust(str(funded.pk), "u_1", "15000", "K"), other]}
    ).json()["results"]
    assert same[0]["status"] == 202
    later = client.post("/api/v1/events/batch", {"events": [other]}).json()["results"]
    for refused in (same[1], later[0]):
        assert refused["status"] == 422
        assert refused["error"]["code"] == "idempotency_key_reused"
        assert refused["error"]["approval_request_id"] == same[0]["body"]["approval_request_id"]


def test_a_gated_adjustment_meets_its_key_taken_by_a_later_item_than_the_first(api, make_program):
    """The first item with the key was refused, the next took it: the adjustment repeating
    it is that entry's reuse, not a pending request holding a key already written (the
    batch looked at the key's first item only)."""
    client = api("system")
    single, batch = (make_program(merchant_id=OWN, name=name) for name in ("single", "batch"))

    def items(program_id):
        return [
            purchase(program_id, "x", "1000", "USD", "K"),  # refused: K stays free
            purchase(program_id, "y", "1000", "USD", "J"),  # refused: J stays free
            adjust(program_id, "m", "15000", "J"),  # m's pending request, holding J
            purchase(program_id, "z", "1000", "XOF", "K"),  # takes K
            adjust(program_id, "n", "15000", "K"),  # K is z's purchase's: reused
        ]

    expected = [(422, "currency_mismatch", None), (422, "currency_mismatch", None),
                (202, None, None), (201, None, "20.00"),
                (422, "idempotency_key_reused", None)]  # fmt: skip
    assert one_by_one(client, items(str(single.pk))) == expected
    assert batched(client, items(str(batch.pk))) == expected
