"""The batch path writes an audit entry's `changes` without `pii_scrub` when no text of it can
hold PII: whatever the texts, the JSON must be exactly the canonical JSON of the scrubbed
document (the digest depends on it). Nor when it writes an entry's out directly."""

from decimal import Decimal as D
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.integrity import canonical_json
from audit.pii import pii_scrub
from loyalty.services.batch import _entry_changes_json, audit_changes_json
from loyalty.services.ingestion import entry_audit_after

KEY = b"k" * 32
PIECES = st.sampled_from(
    ["u", "7", "77", "1234", "5678", "+221", " ", "-", ".", "(", ")", "@", "a@b.co", "\x00",
     "é", '"', "\\", "\u2028", "2026-11-27", "x.y"]
)  # fmt: skip
TEXTS = st.one_of(st.text(max_size=12), st.lists(PIECES, max_size=8).map("".join))
NAMES = st.sampled_from(
    ["member_id", "points", "balance_after", "reference", "reason", "email", "metadata", "Note"]
)


@settings(max_examples=3000, deadline=None)
@given(after=st.dictionaries(NAMES, TEXTS, max_size=5))
def test_changes_are_the_canonical_json_of_the_scrubbed_document(after):
    assert audit_changes_json(after, key=KEY) == canonical_json(
        {"after": pii_scrub(after, key=KEY)}
    )


def test_a_document_with_an_email_or_a_phone_number_is_scrubbed():
    after = {"member_id": "+221 77 123 45 67", "reference": "bob@example.com", "points": "5"}
    changes = audit_changes_json(after, key=KEY)
    assert "123" not in changes
    assert "example.com" not in changes
    assert changes == canonical_json({"after": pii_scrub(after, key=KEY)})


POINTS = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=2),
    st.sampled_from([D("0.00"), D("-12.50"), D("1E+3"), D("99999999999999999.99")]),
)


@settings(max_examples=3000, deadline=None)
@given(member_id=TEXTS, reference=TEXTS, points=POINTS, balance_after=POINTS)
def test_an_entrys_changes_are_those_of_its_audited_document(
    member_id, reference, points, balance_after
):
    entry = SimpleNamespace(points=points, balance_after=balance_after, reference=reference)
    balance = SimpleNamespace(member_id=member_id)
    assert _entry_changes_json(entry, balance, key=KEY) == audit_changes_json(
        entry_audit_after(entry, balance), key=KEY
    )
