"""An event's fingerprint is stored in each entry's details and compared by replays: the JSON it
digests must stay exactly `json.dumps(body, sort_keys=True)`, whatever the texts."""

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty.services.ingestion import EventInput

TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "u_7", "order-1", '"', "\\", "\x7f", "\x00", "é", "\u2028", "😀"]),
)
AMOUNTS = st.one_of(st.none(), st.decimals(allow_nan=False, allow_infinity=False, places=2))


METADATA = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=4,
)
TIMES = st.one_of(
    st.none(),
    st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5, minutes=-30))])),
)


def full_fingerprint(event: EventInput) -> str:
    """Every field but the key, as json writes them: the fingerprint entries store now."""
    body = {
        "type": event.type,
        "member_id": event.member_id,
        "amount": None if event.amount is None else str(event.amount.normalize()),
        "currency": event.currency,
        "points": None if event.points is None else str(event.points.normalize()),
        "reference": event.reference,
        "original_reference": event.original_reference,
        "module": event.module,
        "reason": event.reason,
        "occurred_at": None
        if event.occurred_at is None
        else event.occurred_at.astimezone(UTC).isoformat(),
        "metadata": event.metadata,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
    module=TEXTS,
    reason=TEXTS,
    occurred_at=TIMES,
    metadata=METADATA,
)
def test_the_fingerprint_digests_every_field_but_the_key_as_json_writes_them(
    type_, member_id, idempotency_key, amount, currency, points, reference, original_reference,
    module, reason, occurred_at, metadata,
):  # fmt: skip
    event = EventInput(
        type=type_,
        member_id=member_id,
        idempotency_key=idempotency_key,
        amount=amount,
        currency=currency,
        points=points,
        reference=reference,
        original_reference=original_reference,
        module=module,
        reason=reason,
        occurred_at=occurred_at,
        metadata=metadata,
    )
    assert event.fingerprint() == full_fingerprint(event)
    # Entries stored before the fingerprint covered module, reason, time and metadata.
    assert event.former_fingerprint() == former_fingerprint(event)
    assert event.is_repeat_of(full_fingerprint(event))
    assert event.is_repeat_of(former_fingerprint(event))


def test_a_member_id_that_is_not_text_is_written_as_json_writes_it():
    event = EventInput(
        type="purchase",
        member_id=7,
        idempotency_key="k",
        amount=Decimal("5"),
        metadata={"b": [1, {"z": None, "a": "é"}], "a": True},
    )
    assert event.fingerprint() == full_fingerprint(event)
    assert event.former_fingerprint() == former_fingerprint(event)


def test_the_same_instant_in_another_offset_is_the_same_event():
    at = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    first = EventInput(type="purchase", member_id="u", idempotency_key="k", occurred_at=at)
    again = EventInput(
        type="purchase",
        member_id="u",
        idempotency_key="k",
        occurred_at=at.astimezone(timezone(timedelta(hours=1))),
    )
    assert again.fingerprint() == first.fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"module": "shop"},
        {"reason": "another"},
        {"occurred_at": datetime(2026, 11, 27, 10, 0, 1, tzinfo=UTC)},
        {"metadata": {"channel": "web"}},
        {"metadata": {}},
    ],
)
def test_a_change_of_any_field_is_another_event(change):
    fields = {
        "type": "purchase",
        "member_id": "u",
        "idempotency_key": "k",
        "amount": Decimal("100"),
        "currency": "XOF",
        "module": "eats",
        "reason": "r",
        "occurred_at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        "metadata": {"channel": "app"},
    }
    first = EventInput(**fields)
    other = EventInput(**{**fields, **change})
    assert not other.is_repeat_of(first.fingerprint())
    # A stored former fingerprint covered none of these: its repeat is told as it was.
    assert other.is_repeat_of(first.former_fingerprint())


def test_metadata_numbers_are_compared_by_value():
    """As a JSON column gives them back: an approval's payload, stored, reads 1e19 as an int."""

    def fingerprint(metadata):
        return EventInput(
            type="manual_adjust", member_id="u", idempotency_key="k", metadata=metadata
        ).fingerprint()

    assert fingerprint({"n": 1e19, "l": [7.0, {"x": -0.0}]}) == fingerprint(
        {"n": 10**19, "l": [7, {"x": 0}]}
    )
    # The number the float's JSON text names, as jsonb keeps it: 1e23 is 10**23.
    assert fingerprint({"n": 1e23}) == fingerprint({"n": 10**23}) != fingerprint({"n": int(1e23)})
    assert fingerprint({"n": 7.5}) != fingerprint({"n": 7})
    assert fingerprint({"n": True}) != fingerprint({"n": 1})
    assert fingerprint({"n": "7"}) != fingerprint({"n": 7})
