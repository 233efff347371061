"""The write path's shortcuts in the audit trail give exactly what the full rules give: the
digest of every stored entry depends on the text of its scrubbed changes."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.integrity import canonical_json, scrubbed_json
from audit.pii import EMAIL_RE, PHONE_RE, _phone, _scrub_text, pii_fingerprint, pii_scrub

KEY = b"k" * 32
PIECES = st.sampled_from(
    ["u", "7", "1234", "5678", "+221", " ", "-", ".", "@", "a@b.co", "x_y@d-e.org", "\x00",
     "é", '"', "\\", "\u2028", "\x1f", "\x7f", "😀", "2026-11-27", "</"]
)  # fmt: skip
TEXTS = st.one_of(st.text(max_size=16), st.lists(PIECES, max_size=8).map("".join))
# What pii_scrub gives: plain JSON without floats.
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63), TEXTS)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(TEXTS, children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=3000, deadline=None)
@given(document=st.dictionaries(TEXTS, DOCUMENTS, max_size=4))
def test_scrubbed_json_is_the_canonical_json(document):
    assert scrubbed_json(document) == canonical_json(document)


@settings(max_examples=1000, deadline=None)
@given(document=st.dictionaries(TEXTS, DOCUMENTS, max_size=4))
def test_scrubbed_json_of_a_scrubbed_document(document):
    scrubbed = pii_scrub(document, key=KEY)
    assert scrubbed_json(scrubbed) == canonical_json(scrubbed)


def test_a_lone_surrogate_or_a_huge_int_goes_through_json():
    for document in ({"a": "\ud800"}, {"a": 2**70}, {"a": [-(2**64)]}):
        assert scrubbed_json(document) == canonical_json(document)


def full_scrub_text(text: str, *, free_text: bool) -> str:
    """`_scrub_text` without its quick path: every text searched for an email."""
    text = text.replace("\x00", "")
    text = EMAIL_RE.sub(lambda m: pii_fingerprint(m.group(0), key=KEY), text)
    if free_text:
        text = PHONE_RE.sub(lambda m: _phone(m, key=KEY), text)
    return text


@settings(max_examples=3000, deadline=None)
@given(text=TEXTS, free_text=st.booleans())
def test_the_text_scrub_equals_the_full_one(text, free_text):
    assert _scrub_text(text, key=KEY, free_text=free_text) == full_scrub_text(
        text, free_text=free_text
    )


def test_an_email_is_still_fingerprinted():
    scrubbed = _scrub_text("order for bob@example.com", key=KEY, free_text=False)
    assert "example.com" not in scrubbed
    assert re.fullmatch(r"order for pii:[0-9a-f]{12}", scrubbed)


def full_scrub(value, *, parent=None):
    """`pii_scrub`'s rules written out without its shortcuts."""
    from audit.pii import FREE_TEXT_KEYS, PII_KEYS, REMOVED, REMOVED_KEYS

    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            lowered = str(k).lower()
            if lowered in REMOVED_KEYS:
                out[str(k)] = REMOVED
            elif lowered in PII_KEYS:
                out[str(k)] = None if v in (None, "") else pii_fingerprint(v, key=KEY)
            else:
                out[str(k)] = full_scrub(v, parent=lowered)
        return out
    if isinstance(value, list):
        return [full_scrub(v, parent=parent) for v in value]
    if value is None or isinstance(value, bool | int):
        return value
    return full_scrub_text(str(value), free_text=parent in FREE_TEXT_KEYS)


NAMES = st.one_of(
    TEXTS,
    st.sampled_from(["member_id", "Reason", "reference", "email", "metadata", "note", "points"]),
)


@settings(max_examples=2000, deadline=None)
@given(document=st.dictionaries(NAMES, st.one_of(TEXTS, DOCUMENTS), max_size=5))
def test_the_scrub_equals_its_rules_written_out(document):
    assert pii_scrub(document, key=KEY) == full_scrub(document)
