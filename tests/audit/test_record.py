"""audit_record: PII never stored in clear, digests that survive the database round trip."""

import json
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from audit.integrity import audit_key
from audit.models import AuditEntry
from audit.pii import pii_fingerprint, pii_scrub
from audit.services import audit_record
from audit.verify import audit_verify
from loyalty.actors import Actor

pytestmark = pytest.mark.django_db

ACTOR = Actor(id="ops-1", role="ops_marketing", ip="::FFFF:10.0.0.1", user_agent="pytest")


def test_pii_is_fingerprinted_or_removed_and_business_data_kept():
    entry = audit_record(
        actor=ACTOR,
        action="balance.freeze",
        entity_type="balance",
        entity_id=42,
        merchant_id="m_1",
        before={"is_frozen": False},
        after={
            "is_frozen": True,
            "email": "Awa.Diop@example.com",
            "metadata": {"national_id": "1 234 5678 90123", "note": "VIP"},
            "reason": "Customer called from +221 77 123 45 67, mail awa.diop@example.com",
            "member_id": "+221771234567",
            "name": "Eats Rewards",
            "points": Decimal("10000.50"),
            "at": datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
            "tiers": [{"name": "gold", "phone": "771234567"}],
        },
    )
    entry.refresh_from_db()
    stored = json.dumps(entry.changes)
    for clear in ("Awa.Diop", "awa.diop", "77 123 45 67", "771234567", "1 234 5678", "VIP"):
        assert clear not in stored
    after = entry.changes["after"]
    key = audit_key()
    # The same email in a field and in free text gives the same fingerprint: correlatable.
    assert after["email"] == pii_fingerprint("awa.diop@example.com", key=key)
    assert after["email"] in after["reason"]
    assert after["metadata"] == "[removed]"
    assert after["member_id"] == pii_fingerprint("221771234567", key=key)
    assert after["reason"].startswith("Customer called from pii:")
    assert after["name"] == "Eats Rewards"  # a program's name is not personal data
    assert after["points"] == "10000.50"
    assert after["at"] == "2026-11-27T10:00:00+00:00"
    assert after["tiers"][0] == {"name": "gold", "phone": pii_fingerprint("771234567", key=key)}
    assert entry.changes["before"] == {"is_frozen": False}


def test_dates_ids_and_amounts_are_not_mistaken_for_phone_numbers():
    entry = audit_record(
        actor=ACTOR,
        action="program.update",
        entity_type="program",
        entity_id="0f8fad5b-d9cb-469f-a165-70867728950e",
        after={"reason": "budget raised on 2026-11-27 to 1250000 XOF, ref 0f8fad5b-70867728950e"},
    )
    assert entry.changes["after"]["reason"] == (
        "budget raised on 2026-11-27 to 1250000 XOF, ref 0f8fad5b-70867728950e"
    )


def test_entry_keeps_who_where_and_a_digest_that_verifies_after_reload():
    entry = audit_record(
        actor=ACTOR,
        action="program.create",
        entity_type="program",
        entity_id="p1",
        merchant_id="m_1",
        after={"currency": "XOF", "nested": {"list": [1, "two", None, True]}},
    )
    stored = AuditEntry.objects.get(pk=entry.pk)
    assert (stored.actor_id, stored.actor_role, stored.user_agent) == (
        "ops-1",
        "ops_marketing",
        "pytest",
    )
    assert stored.ip == "::ffff:10.0.0.1"
    assert len(stored.digest) == 64
    assert audit_verify() == []


def test_invalid_ip_is_dropped_not_stored():
    entry = audit_record(
        actor=Actor(id="x", role="system", ip="not-an-ip, 10.0.0.1"),
        action="job.run",
        entity_type="program",
        entity_id="p1",
    )
    entry.refresh_from_db()
    assert entry.ip is None
    assert audit_verify() == []


def test_an_approval_target_naming_a_member_by_phone_is_scrubbed(program):
    from approvals.services import approval_request_create

    phone = "+221771234567"
    approval_request_create(
        operation="balance_adjustment",
        program=program,
        target=f"balance:{program.pk}:{phone}",
        amount=Decimal("20000"),
        actor=ACTOR,
        payload={"program_id": str(program.pk), "member_id": phone, "points": "20000",
                 "reason": "goodwill", "idempotency_key": "adj-1"},
    )  # fmt: skip
    entry = AuditEntry.objects.get(action="approval.request")
    assert "771234567" not in json.dumps(entry.changes)
    assert entry.changes["after"]["target"].startswith("balance:")
    assert audit_verify() == []


@pytest.mark.parametrize(
    ("text", "phone"),
    [
        ("tel_221771234567", "221771234567"),
        ("+33 (0)6 12 34 56 78", "612345678"),
        ("balance:12345678-1234-4123-8123-123456789012:+221771234567", "221771234567"),
    ],
)
def test_a_phone_number_in_an_identifier_is_scrubbed_and_an_id_beside_it_kept(text, phone):
    scrubbed = pii_scrub({"target": text, "member_id": text}, key=b"k")
    for value in scrubbed.values():
        assert "pii:" in value
        assert phone not in re.sub(r"\D", "", value)
    target = pii_scrub({"target": "balance:5bffd619-d2d1-4494-8721-f085c5b364f5:u_1"}, key=b"k")
    assert target["target"] == "balance:5bffd619-d2d1-4494-8721-f085c5b364f5:u_1"


def test_a_date_beside_a_number_stays_and_a_phone_keeps_its_fingerprint():
    key = b"k" * 32
    doc = {"reason": "goodwill: voucher expired on 2024-01-05 (11:00 call)"}
    assert pii_scrub(doc, key=key) == doc
    out = pii_scrub({"reason": "called 0612345678 (2 times)"}, key=key)
    assert pii_fingerprint("0612345678", key=key) in out["reason"]
