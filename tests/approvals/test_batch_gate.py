"""A manual_adjust that waits for approval, repeated in a batch, answers what POST
/api/v1/events answers one by one: the same 202 for the same key (one pending request, not a
409 for the second), the replay of the entry once the request was executed (not a new pending
request), `idempotency_key_reused` for another event under a key already taken."""

import pytest

from access.models import IdempotencyRecord
from approvals.models import ApprovalRequest
from loyalty.models import LedgerEntry

from .test_api import adjustments, big_adjust

pytestmark = pytest.mark.django_db


def batch(client, *items):
    response = client.post("/api/v1/events/batch", {"events": list(items)})
    assert response.status_code == 200
    return response.json()["results"]


def keyed(body, key):
    return {**body, "idempotency_key": key}


def execute(api, request_id) -> dict:
    api("ops_marketing", sub="ops-2").post(f"/api/v1/approvals/{request_id}/approve", {})
    response = api("finance_ops", sub="fin-1").post(f"/api/v1/approvals/{request_id}/approve", {})
    assert response.json()["status"] == "executed"
    return response.json()


def test_a_gated_adjustment_repeated_in_a_batch_gets_the_same_202_as_one_by_one(api, funded):
    maker = api("system", sub="ops-maker")
    # One by one: the repeat replays the first answer.
    first = maker.post("/api/v1/events", big_adjust(funded), key="one-k")
    again = maker.post("/api/v1/events", big_adjust(funded), key="one-k")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert ApprovalRequest.objects.count() == 1

    adjust = big_adjust(funded, member="u_2")
    results = batch(
        maker,
        keyed(adjust, "b-k"),
        keyed(adjust, "b-k"),
        keyed({**adjust, "points": "20000"}, "b-k"),  # the key, another event
        keyed({**adjust, "type": "referral"}, "b-k"),  # not gated: still the key's reuse
    )
    assert [r["status"] for r in results] == [202, 202, 422, 422]
    assert results[1] == {**results[0], "index": 1, "replayed": True}
    assert [r["error"]["code"] for r in results[2:]] == ["idempotency_key_reused"] * 2
    assert ApprovalRequest.objects.count() == 2  # one for the batch's key
    assert not LedgerEntry.objects.filter(idempotency_key="b-k").exists()  # the request's


def test_an_executed_adjustment_sent_again_in_a_batch_is_its_replay(api, funded):
    maker = api("system", sub="ops-maker")
    request_id = maker.post("/api/v1/events", big_adjust(funded), key="adj-k").json()[
        "approval_request_id"
    ]
    execute(api, request_id)
    assert adjustments() == 1
    entry = LedgerEntry.objects.get(idempotency_key="adj-k")

    [item] = batch(maker, keyed(big_adjust(funded), "adj-k"))
    assert (item["status"], item["replayed"]) == (201, True)
    assert item["body"]["transaction_id"] == str(entry.pk)
    assert ApprovalRequest.objects.count() == 1  # no new request
    # One by one, once the request's own record of the key is gone (kept 24 hours): the same
    # replay, not a new request either.
    IdempotencyRecord.objects.filter(key="adj-k").delete()
    single = maker.post("/api/v1/events", big_adjust(funded), key="adj-k")
    assert single.status_code == 201
    assert single["Idempotent-Replayed"] == "true"
    assert single.json() == item["body"]
    # Another event under that key, both ways: the key's reuse.
    other = big_adjust(funded, points="-10000.02")
    [reused] = batch(maker, keyed(other, "adj-k"))
    assert (reused["status"], reused["error"]["code"]) == (422, "idempotency_key_reused")
    single = maker.post("/api/v1/events", other, key="adj-k")
    assert (single.status_code, single.json()["code"]) == (422, "idempotency_key_reused")
    assert ApprovalRequest.objects.count() == 1
    assert adjustments() == 1


def test_an_executed_adjustment_of_the_adjustments_endpoint_is_replayed_once_forgotten(api, funded):
    maker = api("system", sub="ops-maker")
    url = f"/api/v1/programs/{funded.pk}/members/u_1/adjustments"
    body = {"points": "10000.01", "reason": "goodwill"}
    request_id = maker.post(url, body, key="ep-k").json()["approval_request_id"]
    executed = execute(api, request_id)
    IdempotencyRecord.objects.filter(key="ep-k").delete()
    again = maker.post(url, body, key="ep-k")
    assert again.status_code == 201
    assert again.json()["transaction_id"] == executed["result"]["transaction_id"]
    assert ApprovalRequest.objects.count() == 1
    assert adjustments() == 1


def test_a_gated_adjustment_repeating_a_key_of_an_earlier_item_of_the_batch(api, funded):
    """The earlier item was written: its key is taken, the adjustment is its reuse (no
    request). The earlier item was refused: its key is free, the adjustment waits for
    approval, as one by one."""
    maker = api("system", sub="ops-maker")
    purchase = {
        "program_id": str(funded.pk), "member_id": "u_3", "type": "purchase",
        "amount": "10000", "currency": "XOF", "reference": "order-1",
    }  # fmt: skip
    results = batch(
        maker,
        keyed(purchase, "k-1"),
        keyed(big_adjust(funded, member="u_4"), "k-1"),
        keyed({**purchase, "currency": "USD"}, "k-2"),  # refused: the program's is XOF
        keyed(big_adjust(funded, member="u_5"), "k-2"),
        keyed(big_adjust(funded, member="u_5"), "k-2"),
    )
    assert [r["status"] for r in results] == [201, 422, 422, 202, 202]
    assert results[1]["error"]["code"] == "idempotency_key_reused"
    assert results[2]["error"]["code"] == "currency_mismatch"
    assert results[4] == {**results[3], "index": 4, "replayed": True}
    assert list(ApprovalRequest.objects.values_list("target", flat=True)) == [
        f"balance:{funded.pk}:u_5"
    ]


def test_items_after_a_waiting_adjustment_wait_for_it_too(api, funded):
    """An adjustment needing approval repeats the key of an earlier item that was refused:
    the key is free, so it opens the request, and a later item under that key is answered
    from the request, as one by one, not written first."""

    def adjust(points):
        return keyed({**big_adjust(funded), "points": points}, "K")

    results = batch(api("system"), adjust("-9000"), adjust("20000"), adjust("5"))
    got = [(r["status"], r.get("error", {}).get("code")) for r in results]
    assert got == [(422, "insufficient_points"), (202, None), (422, "idempotency_key_reused")]
    assert not LedgerEntry.objects.filter(program=funded, idempotency_key="K").exists()
    assert ApprovalRequest.objects.count() == 1


def test_an_approved_event_is_written_as_it_was_sent(api, funded):
    """The approval runs the event the request was made of, reference, module, time and
    metadata included: its entry carries them, and a resend of that event (a batch item, or
    the event once its HTTP record is gone) is its replay, not a reuse of the key."""
    maker = api("system", sub="ops-maker")
    event = {
        **big_adjust(funded), "reference": "ticket-77", "module": "support",
        "occurred_at": "2026-11-20T09:30:00Z", "metadata": {"case": "C-12"},
    }  # fmt: skip
    first = maker.post("/api/v1/events", event, key="ref-k")
    assert first.status_code == 202
    execute(api, first.json()["approval_request_id"])

    entry = LedgerEntry.objects.get(idempotency_key="ref-k")
    assert (entry.reference, entry.module, entry.occurred_at.isoformat(), entry.metadata) == (
        "ticket-77", "support", "2026-11-20T09:30:00+00:00", {"case": "C-12"}
    )  # fmt: skip
    (item,) = batch(maker, keyed(event, "ref-k"))
    assert (item["status"], item["replayed"]) == (201, True)
    IdempotencyRecord.objects.filter(key="ref-k").delete()
    again = maker.post("/api/v1/events", event, key="ref-k")
    assert again.status_code == 201, again.json()
    assert again.json()["transaction_id"] == str(entry.pk)


def test_a_waiting_adjustment_keeps_its_place_before_the_members_next_one(api, funded):
    """Item 1 repeats the key of item 0, refused: it waits for that outcome, then opens the
    member's pending request, as one by one; item 2, the member's next gated adjustment,
    waits behind it and is refused with approval_pending_exists (it took the request
    first)."""
    maker = api("system", sub="ops-maker")
    refused_purchase = {
        "program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
        "amount": "10000", "currency": "USD",  # the program's is XOF
    }  # fmt: skip
    results = batch(
        maker,
        keyed(refused_purchase, "K"),
        keyed(big_adjust(funded), "K"),
        keyed(big_adjust(funded, points="20000"), "K2"),
    )
    got = [(r["status"], r.get("error", {}).get("code")) for r in results]
    assert got == [(422, "currency_mismatch"), (202, None), (409, "approval_pending_exists")]
    assert ApprovalRequest.objects.get().payload["idempotency_key"] == "K"


def test_an_invalid_adjustment_repeating_a_written_key_is_a_400_as_one_by_one(api, funded):
    maker = api("system", sub="ops-maker")
    invalid = keyed(big_adjust(funded), "K")
    del invalid["points"]
    single = maker.post("/api/v1/events", invalid, key="K-single")
    assert (single.status_code, single.json()["code"]) == (400, "validation_error")

    results = batch(maker, keyed(big_adjust(funded, points="5"), "K"), invalid)

    got = [(r["status"], r.get("error", {}).get("code")) for r in results]
    assert got == [(201, None), (400, "validation_error")]
