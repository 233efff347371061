"""The request fingerprint is stored with each idempotency record and compared with a repeat's:
its canonical JSON must stay byte for byte what it was before orjson wrote it, and before
numbers stopped being written out in full (records stored before the change still match their
repeats). The reference below is the former code: it rounded to 28 significant digits and
wrote any exponent out in digits, so it is the reference for numbers within both."""

import json
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from access.idempotency import PLAIN_EXPONENT, _canonical_json


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


def _ordinary(number) -> bool:
    """At most 28 significant digits (the former rounding's), within PLAIN_EXPONENT."""
    _, digits, exponent = Decimal(number).as_tuple()
    significant = "".join(map(str, digits)).strip("0")
    if not significant:
        return abs(exponent) <= PLAIN_EXPONENT
    exponent += len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return len(significant) <= 28 and abs(exponent) <= PLAIN_EXPONENT


NUMBERS = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False),
).filter(_ordinary)
LEAVES = st.one_of(TEXTS, NUMBERS, st.booleans(), st.none())
# Keys starting with "#" are written with one more since (below): the former JSON is the
# reference for every other body.
KEYS = TEXTS.filter(lambda key: not key.startswith("#"))
BODIES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
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


def test_huge_exponents_are_not_written_out():
    # Written out, 1E+999999 was a megabyte per number; Decimal's normalize() overflowed on
    # 1e1000000 (a 500).
    assert _canonical_json({"a": Decimal("1E+999999")}) == b'{"a":{"#":"1E+999999"}}'
    assert _canonical_json({"a": Decimal("1e1000000")}) == b'{"a":{"#":"1E+1000000"}}'
    assert _canonical_json([Decimal("-1.50E-300")]) == b'[{"#":"-15E-301"}]'
    assert _canonical_json([Decimal("0E-1000000")]) == _canonical_json([0])
    # Plain digits up to PLAIN_EXPONENT, as before; past it the other form, never equal to one.
    assert _canonical_json([Decimal(f"1E+{PLAIN_EXPONENT}")]) == (
        b'[{"#":"1' + b"0" * PLAIN_EXPONENT + b'"}]'
    )
    assert _canonical_json([Decimal(f"1E+{PLAIN_EXPONENT + 1}")]) == (
        f'[{{"#":"1E+{PLAIN_EXPONENT + 1}"}}]'.encode()
    )
    assert _canonical_json([10 ** (PLAIN_EXPONENT + 1)]) == _canonical_json(
        [Decimal(f"1E+{PLAIN_EXPONENT + 1}")]
    )


def test_numbers_past_28_digits_are_not_rounded():
    # The former normalize() rounded to 28 significant digits: these two were one fingerprint.
    a = Decimal("1.0000000000000000000000000001")
    b = Decimal("1.00000000000000000000000000012")
    assert _canonical_json([a]) != _canonical_json([b])
    assert _canonical_json([10**30 + 1]) == b'[{"#":"1000000000000000000000000000001"}]'


def test_orjson_and_json_paths_agree_on_long_numbers():
    # A non-ASCII text sends the body through json's path; the numbers' text is the same.
    numbers = [Decimal("1E+999999"), Decimal("-12.5E-300"), 10**40 + 7, Decimal("100.00")]
    via_orjson = _canonical_json({"n": numbers, "t": "a"})
    via_json = _canonical_json({"n": numbers, "t": "é"})
    assert via_orjson.replace(b'"a"', b"") == via_json.replace(b'"\\u00e9"', b"")


def test_no_object_of_a_body_reads_as_a_number_or_as_another_object():
    """A number is written {"#": text}: an object of the body with that very key (or "##",
    "###", ...) must not fingerprint like it, or another body under the same key would be
    answered as a replay instead of idempotency_key_reused."""
    distinct = [
        {"table": 7},
        {"table": {"#": "7"}},
        {"table": {"##": "7"}},
        {"table": {"###": "7"}},
        {"#": "7"},
        {"##": "7"},
        {"#a": 1},
        {"##a": 1},
    ]
    written = [_canonical_json(body) for body in distinct]
    assert len(set(written)) == len(distinct)
    # A top-level object of texts (most events) takes the same care.
    assert _canonical_json({"#": "7", "a": "b"}) != _canonical_json({"##": "7", "a": "b"})
