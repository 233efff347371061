"""The request fingerprint is stored with each idempotency record and compared with a repeat's:
its canonical JSON must stay byte for byte what it was before orjson wrote it (records stored
before the change still match their repeats). The reference below is the former code."""

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from access.idempotency import _canonical_json


def _former_canonical(value):
    if isinstance(value, dict):
        return {k: _former_canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_former_canonical(v) for v in value]
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return {"#": format(Decimal(value).normalize(), "f")}
    return value


def former_canonical_json(value) -> bytes:
    return json.dumps(_former_canonical(value), sort_keys=True, separators=(",", ":")).encode()


# Texts with what JSON escapes (quotes, backslashes, control characters, DEL, non-ASCII,
# U+2028, astral characters) and without; numbers as the strict parser gives them.
TEXTS = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(max_codepoint=0x7F), max_size=12),
    st.sampled_from(["", "order-1", "u_7", "XOF", "purchase", '"', "\\", "\x7f", "\x00", "é"]),
)
NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False),
)
LEAVES = st.one_of(TEXTS, NUMBERS, st.booleans(), st.none())
BODIES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXTS, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=3000, deadline=None)
@given(body=BODIES)
def test_the_canonical_json_is_the_former_one(body):
    assert _canonical_json(body) == former_canonical_json(body)


def test_numbers_are_canonical_and_exact():
    assert _canonical_json({"a": 100}) == _canonical_json({"a": Decimal("100.00")})
    assert _canonical_json({"a": Decimal("100.000000000000000001")}) != _canonical_json({"a": 100})


def test_a_batch_body_is_the_former_json():
    events = [
        {"program_id": "p", "member_id": f"u{n}", "type": "purchase", "amount": "12500",
         "currency": "XOF", "reference": f"order-{n}", "idempotency_key": f"k-{n}"}
        for n in range(50)
    ]  # fmt: skip
    events[7]["points"] = Decimal("10.50")
    events[9]["metadata"] = {"note": "café", "n": 3}
    body = {"events": events}
    assert _canonical_json(body) == former_canonical_json(body)
