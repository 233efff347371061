"""`event_parse` (every event of the single and batch endpoints): whatever JSON it is given,
it answers a program id and an event, or a ValidationFailed naming the bad fields; never
another exception (which the API would answer with a 500)."""

import re
import uuid
from decimal import Decimal

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from loyalty.api.events import _event_new, event_parse
from loyalty.errors import ValidationFailed
from loyalty.services import EventInput

PROGRAM = str(uuid.UUID(int=7))
TEXTS = st.one_of(
    st.none(),
    st.sampled_from(["", "u1", "a/b", "x\n", "abc\x00", "é", " ", "+221 77 123 45 67"]),
    st.text(max_size=5),
    st.text(min_size=120, max_size=140),
    st.integers(),
)
NUMBERS = st.one_of(
    st.none(),
    st.sampled_from(["10000", "12.50", "0.001", "-3", "1e3", " 7 ", "", "NaN", "12.5.1"]),
    st.integers(-(10**21), 10**21),
    st.decimals(allow_nan=True, allow_infinity=True, places=3),
    st.booleans(),
)
EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "program_id": st.one_of(
            st.just(PROGRAM), st.sampled_from(["nope", PROGRAM.replace("-", ""), ""]), st.integers()
        ),
        "member_id": TEXTS,
        "type": st.sampled_from(["purchase", "refund", "referral", "manual_adjust", "x", None, 3]),
        "amount": NUMBERS,
        "points": NUMBERS,
        "currency": st.sampled_from(["XOF", "xof", "XO", "XOFF", "", None, 1, "XOF\n"]),
        "reason": TEXTS,
        "module": TEXTS,
        "reference": TEXTS,
        "original_reference": TEXTS,
        "occurred_at": st.sampled_from(
            ["2026-11-27T10:00:00Z", "2026-11-27T10:00:00", "later", None, 5]
        ),
        "metadata": st.sampled_from([None, {}, {"a": 1}, {"a": Decimal("1.5")}, [], "x"]),
        "idempotency_key": st.sampled_from(["k1", "k 1", "", None, "k\n", "x" * 256, 9]),
        "extra": st.integers(),
    },
)


# Mostly valid: the required fields right, every other one drawn as above.
NEAR_VALID = st.builds(
    lambda base, extra: {**base, **extra},
    st.fixed_dictionaries(
        {
            "program_id": st.just(PROGRAM),
            "member_id": st.sampled_from(["u1", "member-42", "é"]),
            "type": st.sampled_from(["purchase", "refund", "referral", "manual_adjust"]),
            "idempotency_key": st.sampled_from(["k1", "k-2"]),
        }
    ),
    EVENTS,
)


@settings(max_examples=1500, deadline=None)
@given(data=st.one_of(EVENTS, NEAR_VALID), key=st.sampled_from([None, "hdr-1"]))
def test_any_event_parses_or_names_its_bad_fields(data, key):
    try:
        program_id, parsed = event_parse(data, idempotency_key=key)
    except ValidationFailed as error:
        errors = error.errors
        event("invalid")
    else:
        errors = None
        event("valid")
    if errors is not None:
        assert errors
        assert all(isinstance(messages, list) and messages for messages in errors.values())
        return
    assert program_id == uuid.UUID(PROGRAM)
    assert isinstance(parsed, EventInput)
    assert parsed.idempotency_key == (key or data["idempotency_key"])
    assert parsed.member_id == data["member_id"]


def test_a_typical_purchase():
    data = {
        "program_id": PROGRAM,
        "member_id": "u1",
        "type": "purchase",
        "amount": "12500",
        "currency": "XOF",
        "module": "shop",
        "reference": "order-1",
        "idempotency_key": "k-1",
    }
    program_id, parsed = event_parse(data)
    assert program_id == uuid.UUID(PROGRAM)
    assert (parsed.type, parsed.amount, parsed.currency) == ("purchase", Decimal("12500"), "XOF")
    assert (parsed.module, parsed.reference, parsed.idempotency_key) == ("shop", "order-1", "k-1")


def test_every_bad_field_is_named_at_once():
    data = {"program_id": "nope", "member_id": "a/b", "type": "x", "amount": "NaN"}
    with pytest.raises(ValidationFailed) as raised:
        event_parse(data)
    assert set(raised.value.errors) == {
        "program_id",
        "member_id",
        "type",
        "amount",
        "idempotency_key",
    }


def test_a_key_with_a_trailing_newline_is_refused():
    """Python's `$` also matches before a final newline: the key rule must not."""
    data = {"program_id": PROGRAM, "member_id": "u1", "type": "purchase", "idempotency_key": "k\n"}
    with pytest.raises(ValidationFailed) as raised:
        event_parse(data)
    assert set(raised.value.errors) == {"idempotency_key"}


@settings(max_examples=2000, deadline=None)
@given(
    value=st.one_of(
        st.text(alphabet="0123456789", min_size=1, max_size=22),
        st.text(alphabet="0123456789٣². -e", max_size=6),
        st.integers(-(10**20), 10**20),
    )
)
def test_the_short_way_for_whole_amounts_parses_as_parse_decimal(value):
    """Same Decimal (digits and exponent) or the same error as `parse_decimal`."""
    from loyalty.api.events import _decimal
    from loyalty.api.fields import parse_decimal

    try:
        expected = parse_decimal(value)
    except ValueError as error:
        with pytest.raises(ValueError, match=re.escape(str(error))):
            _decimal(value)
    else:
        assert _decimal(value).as_tuple() == expected.as_tuple()


@settings(max_examples=500, deadline=None)
@given(
    values=st.fixed_dictionaries(
        {"type": st.just("purchase"), "member_id": st.just("u1"), "idempotency_key": st.just("k")},
        optional={
            "amount": st.decimals(allow_nan=False, places=2),
            "currency": st.sampled_from(["XOF", "USD"]),
            "points": st.decimals(allow_nan=False, places=2),
            "reason": st.text(max_size=3),
            "module": st.text(max_size=3),
            "reference": st.text(max_size=3),
            "original_reference": st.text(max_size=3),
            "metadata": st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        },
    )
)
def test_a_parsed_event_is_what_its_constructor_makes(values):
    made, built = _event_new(dict(values)), EventInput(**values)
    assert made == built
    assert vars(made) == vars(built)
    if "metadata" not in values:  # each event its own, as the default factory gives
        assert made.metadata is not _event_new(dict(values)).metadata
