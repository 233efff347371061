"""`event_parse`: its fast path for valid events answers exactly what the field-by-field
parser answers, and leaves every invalid event to it."""

import uuid
from decimal import Decimal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from loyalty.api.events import _parse_checked, _parse_valid
from loyalty.errors import ValidationFailed

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


def outcome(parse, data, key):
    try:
        return parse(data, key)
    except ValidationFailed as error:
        return ("invalid", error.errors)


@settings(max_examples=1500, deadline=None)
@given(data=st.one_of(EVENTS, NEAR_VALID), key=st.sampled_from([None, "hdr-1"]))
def test_the_fast_path_answers_as_the_checked_parser(data, key):
    fast = _parse_valid(data, key)
    checked = outcome(_parse_checked, data, key)
    event("valid" if fast is not None else "invalid")
    if fast is not None:
        assert fast == checked
    if checked[0] != "invalid" and fast is None:
        # Valid events should all take the fast path (it is there for them).
        raise AssertionError(f"valid event missed the fast path: {data!r}")


def test_a_typical_purchase_takes_the_fast_path():
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
    program_id, event = _parse_valid(data, None)
    assert program_id == uuid.UUID(PROGRAM)
    assert event.amount == Decimal("12500.00")
    assert event.idempotency_key == "k-1"
    assert (program_id, event) == _parse_checked(data, None)
