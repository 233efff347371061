"""A gated manual_adjust sent again under its own event key, while its approval request is
pending, answers that request (202, the same body) on every path, as POST /events replays
its stored answer; another event with the key is idempotency_key_reused."""

import pytest

from approvals.models import ApprovalRequest
from loyalty.models import LedgerEntry

from .test_ledger_api import event

pytestmark = pytest.mark.django_db


def gated_adjustment(program, **fields):
    body = event(program, type="manual_adjust", points="20000", reason="goodwill",
                 amount=None, currency=None, member_id="u_1")  # fmt: skip
    body.update(fields)
    return body


def test_a_batch_resent_under_a_new_key_answers_its_gated_adjustment_202(api, funded):
    client = api("system")
    item = gated_adjustment(funded, idempotency_key="adj-1")
    first = client.post("/api/v1/events/batch", {"events": [item]}, key="batch-1")
    assert first.status_code == 200
    [first_item] = first.json()["results"]
    assert first_item["status"] == 202
    entries = LedgerEntry.objects.count()

    again = client.post("/api/v1/events/batch", {"events": [item]}, key="batch-2")
    [again_item] = again.json()["results"]
    assert again_item["status"] == 202, again_item
    assert again_item["body"] == first_item["body"]
    assert again_item["replayed"] is True
    assert ApprovalRequest.objects.count() == 1
    assert LedgerEntry.objects.count() == entries


def test_a_batch_item_repeating_a_gated_event_answers_as_post_events_does(api, funded):
    client = api("system")
    body = gated_adjustment(funded)
    first = client.post("/api/v1/events", body, key="adj-2")
    assert first.status_code == 202
    assert client.post("/api/v1/events", body, key="adj-2").status_code == 202

    response = client.post(
        "/api/v1/events/batch", {"events": [{**body, "idempotency_key": "adj-2"}]}
    )
    [item] = response.json()["results"]
    assert item["status"] == 202, item
    assert item["body"] == first.json()
    assert ApprovalRequest.objects.count() == 1


def test_post_events_repeating_a_gated_batch_item_answers_202(api, funded):
    client = api("system")
    body = gated_adjustment(funded)
    first = client.post("/api/v1/events/batch", {"events": [{**body, "idempotency_key": "adj-3"}]})
    [first_item] = first.json()["results"]
    assert first_item["status"] == 202
    single = client.post("/api/v1/events", body, key="adj-3")
    assert single.status_code == 202, single.json()
    assert single.json() == first_item["body"]
    assert single["Idempotent-Replayed"] == "true"
    assert ApprovalRequest.objects.count() == 1


def test_another_event_with_a_held_key_is_reused_and_opens_nothing(api, funded):
    client = api("system")
    first = client.post("/api/v1/events", gated_adjustment(funded), key="adj-4")
    assert first.status_code == 202
    other = gated_adjustment(funded, points="25000", idempotency_key="adj-4")
    response = client.post("/api/v1/events/batch", {"events": [other]})
    [item] = response.json()["results"]
    assert item["status"] == 422, item
    assert item["error"]["code"] == "idempotency_key_reused"
    assert item["error"]["approval_request_id"] == first.json()["approval_request_id"]
    single = client.post("/api/v1/events", gated_adjustment(funded, points="25000"), key="adj-4")
    assert single.status_code == 422  # the request key's record: another body
    assert single.json()["code"] == "idempotency_key_reused"
    assert ApprovalRequest.objects.count() == 1
