"""An event's fingerprint is stored in each entry's details and compared by replays: the JSON it
digests must stay exactly `json.dumps(body, sort_keys=True)`, whatever the texts."""

import hashlib
import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty.services.ingestion import EventInput

TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "u_7", "order-1", '"', "\\", "\x7f", "\x00", "é", "\u2028", "😀"]),
)
AMOUNTS = st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=2))


def former_fingerprint(event: EventInput) -> str:
    body = {
        "type": event.type,
        "member_id": event.member_id,
        "amount": None if event.amount is None else str(event.amount.normalize()),
        "currency": event.currency,
        "points": None if event.points is None else str(event.points.normalize()),
        "reference": event.reference,
        "original_reference": event.original_reference,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@settings(max_examples=2000, deadline=None)
@given(
    type_=TEXTS,
    member_id=TEXTS,
    idempotency_key=TEXTS,
    amount=AMOUNTS,
    currency=st.one_of(st.none(), TEXTS),
    points=AMOUNTS,
    reference=TEXTS,
    original_reference=TEXTS,
)
def test_the_fingerprint_is_the_former_one(
    type_, member_id, idempotency_key, amount, currency, points, reference, original_reference
):
    event = EventInput(
        type=type_,
        member_id=member_id,
        idempotency_key=idempotency_key,
        amount=amount,
        currency=currency,
        points=points,
        reference=reference,
        original_reference=original_reference,
    )
    assert event.fingerprint() == former_fingerprint(event)


def test_a_member_id_that_is_not_text_is_written_as_json_writes_it():
    event = EventInput(type="purchase", member_id=7, idempotency_key="k", amount=Decimal("5"))
    assert event.fingerprint() == former_fingerprint(event)
