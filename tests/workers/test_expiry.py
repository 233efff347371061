"""Point expiry: exactly once, oldest first, at the day boundary in the program's time zone,
held points kept, one ledger entry per member per run, and the "expiring soon" warning."""

from datetime import datetime
from decimal import Decimal

import pytest
import time_machine

from audit.models import AuditEntry
from loyalty.models import Job, LedgerEntry, OutboxEvent, PointLot, Program
from loyalty.services import redemption_release
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.workers.conftest import member

pytestmark = pytest.mark.django_db
EXPIRY = Job.Kind.POINT_EXPIRY


def at(iso: str):
    return time_machine.travel(datetime.fromisoformat(iso), tick=False)


def test_expires_at_end_of_month_in_program_timezone(make_program, earn, run_job):
    with at("2026-01-10T03:00:00+00:00"):  # 12:00 in Tokyo
        program = make_program(
            timezone="Asia/Tokyo",
            expiry_days=30,
            expiry_rounding=Program.ExpiryRounding.END_OF_MONTH,
        )
        earn(program, "u1", "100")
    lot = PointLot.objects.get()
    # Due Feb 9 -> rounded to the end of February in Tokyo: midnight of March 1, JST.
    assert lot.expires_at == datetime.fromisoformat("2026-03-01T00:00:00+09:00")

    with at("2026-02-28T14:59:59+00:00"):  # 23:59:59 on Feb 28 in Tokyo
        job = run_job(EXPIRY, program)
    assert job.counts.get("members_expired", 0) == 0
    assert member(program, "u1").points_balance == Decimal("100.00")

    with at("2026-02-28T15:00:00+00:00"):  # midnight, March 1 in Tokyo
        job = run_job(EXPIRY, program)
    assert job.status == Job.Status.SUCCEEDED
    assert job.counts["members_expired"] == 1
    balance = member(program, "u1")
    assert balance.points_balance == Decimal("0.00")
    entry = LedgerEntry.objects.get(type=LedgerEntry.Type.EXPIRY)
    assert entry.points == Decimal("-100.00")
    assert entry.balance_after == Decimal("0.00")
    assert entry.idempotency_key == f"expiry:{job.pk}:{balance.pk}"
    assert AuditEntry.objects.filter(action="transaction.expiry", entity_id=str(entry.pk)).exists()
    assert OutboxEvent.objects.filter(event_type="loyalty.points.expired").count() == 1
    assert ledger_verify() == []

    with at("2026-03-05T00:00:00+00:00"):
        again = run_job(EXPIRY, program)
    assert again.counts.get("members_expired", 0) == 0
    assert LedgerEntry.objects.filter(type=LedgerEntry.Type.EXPIRY).count() == 1


def test_oldest_lots_first_and_one_entry_per_member(program, earn, run_job, actor):
    with at("2025-01-01T10:00:00+00:00"):
        earn(program, "u1", "100")
    with at("2025-02-01T10:00:00+00:00"):
        earn(program, "u1", "50")
    with at("2025-06-01T10:00:00+00:00"):
        earn(program, "u1", "30")  # still valid in February 2026
        redemption = hold(program, "120", actor, member_id="u1")
        redemption_release(redemption_id=redemption.pk, actor=actor)
    with at("2026-02-15T00:00:00+00:00"):
        job = run_job(EXPIRY, program)

    assert job.counts["members_expired"] == 1
    entry = LedgerEntry.objects.get(type=LedgerEntry.Type.EXPIRY)
    assert entry.points == Decimal("-150.00")
    assert [lot["points"] for lot in entry.details["lots"]] == ["100.00", "50.00"]
    assert member(program, "u1").points_balance == Decimal("30.00")
    assert list(PointLot.objects.order_by("id").values_list("remaining", flat=True)) == [
        Decimal("0.00"), Decimal("0.00"), Decimal("30.00"),
    ]  # fmt: skip
    assert ledger_verify() == []


def test_consumed_lot_expires_only_what_is_left(program, earn, run_job, actor):
    from loyalty.services import redemption_capture

    with at("2025-01-01T10:00:00+00:00"):
        earn(program, "u1", "100")
        earn(program, "u1", "100")
        redemption = hold(program, "130", actor, member_id="u1")
        redemption_capture(redemption_id=redemption.pk, actor=actor)  # lot 1 gone, lot 2 has 70
    with at("2026-01-02T00:00:00+00:00"):
        run_job(EXPIRY, program)

    assert LedgerEntry.objects.get(type=LedgerEntry.Type.EXPIRY).points == Decimal("-70.00")
    assert member(program, "u1").points_balance == Decimal("0.00")
    assert ledger_verify() == []


def test_points_held_by_a_pending_redemption_wait(program, earn, run_job, actor):
    with at("2025-01-01T10:00:00+00:00"):
        earn(program, "u1", "100")
    with at("2025-12-31T09:55:00+00:00"):
        redemption = hold(program, "60", actor, member_id="u1")
    with at("2026-01-01T11:00:00+00:00"):
        job = run_job(EXPIRY, program)  # the hold is still pending (not yet swept)
    assert job.counts["members_expired"] == 1
    assert job.counts["members_waiting_on_holds"] == 1
    balance = member(program, "u1")
    assert (balance.points_balance, balance.locked) == (Decimal("60.00"), Decimal("60.00"))
    assert PointLot.objects.get().remaining == Decimal("60.00")
    assert ledger_verify() == []

    with at("2026-01-01T11:01:00+00:00"):
        redemption_release(redemption_id=redemption.pk, actor=actor)
    with at("2026-01-02T03:00:00+00:00"):
        run_job(EXPIRY, program)
    assert member(program, "u1").points_balance == Decimal("0.00")
    assert LedgerEntry.objects.filter(type=LedgerEntry.Type.EXPIRY).count() == 2
    assert ledger_verify() == []


def test_no_expiry_when_program_has_none(make_program, earn, run_job):
    with at("2020-01-01T00:00:00+00:00"):
        program = make_program(expiry_days=None)
        earn(program, "u1", "100")
    run_job(EXPIRY, program)
    assert member(program, "u1").points_balance == Decimal("100.00")
    assert not LedgerEntry.objects.filter(type=LedgerEntry.Type.EXPIRY).exists()


def test_expiring_soon_warning_once_per_lot(make_program, earn, run_job):
    with at("2025-01-01T10:00:00+00:00"):
        program = make_program(expiry_days=365, expiry_warning_days=30)
        earn(program, "u1", "100")
        earn(program, "u2", "40")
    with at("2025-06-01T10:00:00+00:00"):
        earn(program, "u2", "60")  # expires in June 2026: outside the warning window
    with at("2025-12-01T10:00:00+00:00"):  # 31 days before: too early
        run_job(EXPIRY, program)
    assert not OutboxEvent.objects.filter(event_type="loyalty.points.expiring").exists()

    with at("2025-12-02T10:00:01+00:00"):
        job = run_job(EXPIRY, program)
    assert job.counts["members_warned"] == 2
    expiring = OutboxEvent.objects.filter(event_type="loyalty.points.expiring")
    events = {e.payload["member_id"]: e.payload for e in expiring}
    assert events["u1"]["points"] == "100.00"
    assert events["u2"]["points"] == "40.00"
    assert PointLot.objects.filter(expiry_warned_at__isnull=False).count() == 2

    with at("2025-12-03T10:00:00+00:00"):
        run_job(EXPIRY, program)
    assert OutboxEvent.objects.filter(event_type="loyalty.points.expiring").count() == 2
