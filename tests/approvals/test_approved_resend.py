"""An adjustment event that waited for approval is written from the request's stored payload:
a resend of the event as it was sent, once approved, is that entry's replay."""

import pytest

from access.models import IdempotencyRecord
from loyalty.models import LedgerEntry

from .test_api import big_adjust
from .test_batch_gate import batch, execute, keyed

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"metadata": {"n": 1e19, "l": [7.0, 0.1]}}, id="metadata-numbers"),
        pytest.param({"metadata": {"n": 1e23, "m": 1.5e300}}, id="metadata-big-floats"),
        pytest.param({"metadata": {"n": 2.0**64 + 2**12, "t": 1e-300}}, id="metadata-binary"),
        pytest.param({"currency": "XOF", "amount": "12.50"}, id="currency-amount"),
        pytest.param({"original_reference": "order-9"}, id="original_reference"),
        pytest.param(
            {"occurred_at": "2026-11-27T10:00:00.123456+05:30", "module": "eats"},
            id="occurred_at-module",
        ),
    ],
)
def test_an_approved_event_is_replayed_when_resent_as_sent(api, funded, fields):
    maker = api("system", sub="ops-maker")
    event = {**big_adjust(funded), "reference": "r-1", **fields}
    first = maker.post("/api/v1/events", event, key="resend-k")
    assert first.status_code == 202, first.json()
    execute(api, first.json()["approval_request_id"])
    entry = LedgerEntry.objects.get(idempotency_key="resend-k")

    (item,) = batch(maker, keyed(event, "resend-k"))
    assert (item["status"], item["replayed"]) == (201, True), item
    assert item["body"]["transaction_id"] == str(entry.pk)
    IdempotencyRecord.objects.filter(key="resend-k").delete()  # the HTTP record gone
    again = maker.post("/api/v1/events", event, key="resend-k")
    assert again.status_code == 201, again.json()
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["transaction_id"] == str(entry.pk)
    # Another event under the key is still another event.
    (other,) = batch(maker, keyed({**event, "reason": "another"}, "resend-k"))
    assert other["error"]["code"] == "idempotency_key_reused"
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 1
