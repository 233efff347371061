"""The ledger keys behind Idempotency-Key on adjustments and holds: whose they are, and how a
repeat answered from them (the HTTP record gone) says it is a replay."""

from datetime import timedelta

import pytest
import time_machine

from access.idempotency import idempotency_records_purge
from access.models import IdempotencyRecord
from loyalty.models import LedgerEntry, Redemption
from loyalty.services import redemptions as redemptions_module
from tests.conftest import hold

pytestmark = pytest.mark.django_db


def adjustments(program, member="u_1") -> str:
    return f"/api/v1/programs/{program.pk}/members/{member}/adjustments"


def records_expired(key: str):
    """The moment after every record of `key` expired, with them purged."""
    expires_at = max(IdempotencyRecord.objects.filter(key=key).values_list("expires_at", flat=True))
    return time_machine.travel(expires_at + timedelta(seconds=1))


def test_two_platform_people_with_the_same_key_each_adjust(api, funded):
    alice = api("finance_ops", merchant_id=None, sub="alice")
    bob = api("finance_ops", merchant_id=None, sub="bob")
    first = alice.post(adjustments(funded), {"points": "100", "reason": "a"}, key="fix-1")
    second = bob.post(adjustments(funded), {"points": "100", "reason": "a"}, key="fix-1")
    assert first.status_code == second.status_code == 201
    assert "Idempotent-Replayed" not in second
    assert second.json()["transaction_id"] != first.json()["transaction_id"]
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 2
    assert second.json()["balance"]["points_balance"] == "2200.00"


def test_a_platform_person_and_the_merchant_with_the_same_key_each_adjust(api, funded):
    staff = api("finance_ops", merchant_id=None, sub="alice")
    merchant = api("finance_ops", sub="carol")  # scoped to the program's merchant
    first = staff.post(adjustments(funded), {"points": "100", "reason": "a"}, key="fix-2")
    second = merchant.post(adjustments(funded), {"points": "100", "reason": "a"}, key="fix-2")
    assert (first.status_code, second.status_code) == (201, 201)
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 2


@pytest.mark.parametrize(
    "caller", [{"merchant_id": None, "sub": "alice"}, {}], ids=["platform", "merchant"]
)
def test_an_adjustment_answered_from_its_ledger_entry_says_replayed(api, funded, caller):
    body = {"points": "100", "reason": "fix"}
    first = api("finance_ops", **caller).post(adjustments(funded), body, key="adj-x")
    assert first.status_code == 201
    with records_expired("adj-x"):
        assert idempotency_records_purge() == 1
        late = api("finance_ops", **caller).post(adjustments(funded), body, key="adj-x")
    assert late.status_code == 201
    assert late["Idempotent-Replayed"] == "true"
    assert late.json()["transaction_id"] == first.json()["transaction_id"]
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 1


def test_a_hold_answered_from_its_redemption_says_replayed(api, funded):
    body = {"program_id": str(funded.pk), "member_id": "u_1", "points": "100"}
    body["reward_type"] = "discount"
    first = api("system").post("/api/v1/redemptions", body, key="hold-x")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first
    with records_expired("hold-x"):
        assert idempotency_records_purge() == 1
        late = api("system").post("/api/v1/redemptions", body, key="hold-x")
    assert late.status_code == 201
    assert late["Idempotent-Replayed"] == "true"
    assert late.json()["id"] == first.json()["id"]
    assert Redemption.objects.count() == 1


def test_a_merchant_scoped_entry_is_not_a_platform_persons_own_key(api, funded):
    """One person with a merchant's token and a platform token: two scopes, two keys."""
    merchant = api("finance_ops", sub="alice")
    first = merchant.post(adjustments(funded), {"points": "100", "reason": "a"}, key="fix-1")
    assert first.status_code == 201, first.json()
    platform = api("finance_ops", merchant_id=None, sub="alice")
    again = platform.post(adjustments(funded), {"points": "100", "reason": "a"}, key="fix-1")
    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 2


def test_a_hold_found_under_the_balance_lock_says_replayed(api, funded, actor, monkeypatch):
    """Two platform people (two HTTP scopes) race on one key: the second waits for the
    member's lock and finds the first's redemption there."""
    first = hold(funded, "100", actor, key="race-k")
    real, calls = redemptions_module._redemption_for_key, []

    def before_the_other_commit(*args):  # the read before the lock saw nothing yet
        calls.append(1)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(redemptions_module, "_redemption_for_key", before_the_other_commit)
    body = {"program_id": str(funded.pk), "member_id": "u_1", "points": "100"}
    body["reward_type"] = "discount"
    late = api("system", merchant_id=None, sub="bob").post(
        "/api/v1/redemptions", body, key="race-k"
    )
    assert late.status_code == 201
    assert late.json()["id"] == str(first.pk)
    assert late["Idempotent-Replayed"] == "true"
    assert Redemption.objects.filter(idempotency_key="race-k").count() == 1
