"""Point expiry: exactly once, oldest first, at the day boundary in the program's time zone,
held points kept, one ledger entry per member per run, and the "expiring soon" warning."""

from datetime import datetime
from decimal import Decimal

import pytest
import time_machine

from audit.models import AuditEntry
from loyalty.actors import system_actor
from loyalty.models import Job, LedgerEntry, OutboxEvent, PointLot, Program
from loyalty.services import redemption_capture, redemption_release
from loyalty.services.jobs import job_create, job_run
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


class WorkerKilled(BaseException):
    """Not an Exception: like a killed process, it leaves the job `running`."""


def _die_after_first_chunk(monkeypatch):
    from loyalty.services import expiry

    real, calls = expiry._expire_chunk, {"n": 0}

    def chunk(**kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise WorkerKilled
        real(**kwargs)

    monkeypatch.setattr(expiry, "_expire_chunk", chunk)
    return lambda: monkeypatch.setattr(expiry, "_expire_chunk", real)


def _expiries(balance) -> list[tuple[Decimal, str]]:
    entries = LedgerEntry.objects.filter(balance=balance, type=LedgerEntry.Type.EXPIRY)
    return list(entries.order_by("id").values_list("points", "idempotency_key"))


def test_taken_over_job_expires_points_released_since_and_the_members_left(
    program, earn, actor, monkeypatch
):
    from loyalty.services import expiry

    with at("2025-01-01T10:00:00+00:00"):
        for member_id in ("u1", "u2", "u3"):
            earn(program, member_id, "100")
    with at("2026-01-02T02:55:00+00:00"):
        redemption = hold(program, "60", actor, member_id="u1")
    monkeypatch.setattr(expiry, "CHUNK", 1)
    revive = _die_after_first_chunk(monkeypatch)
    with at("2026-01-02T03:00:00+00:00"):
        job = job_create(kind=EXPIRY, program=program, actor=system_actor("test"))
        with pytest.raises(WorkerKilled):
            job_run(job_id=job.pk)  # u1's chunk committed (40: 60 are held), then the worker died
    revive()
    with at("2026-01-02T03:01:00+00:00"):
        redemption_release(redemption_id=redemption.pk, actor=actor)  # u1's 60 are due again
    with at("2026-01-02T05:00:00+00:00"):
        job_run(job_id=job.pk)  # the broker redelivers it: taken over
        job_run(job_id=job.pk)  # a later duplicate delivery does nothing

    job.refresh_from_db()
    assert (job.status, job.error) == (Job.Status.SUCCEEDED, "")
    assert job.progress["attempt"] == 2
    assert job.counts["members_expired"] == 4  # u1 in each attempt, u2 and u3 once
    u1, u2, u3 = (member(program, m) for m in ("u1", "u2", "u3"))
    assert _expiries(u1) == [
        (Decimal("-40.00"), f"expiry:{job.pk}:{u1.pk}"),
        (Decimal("-60.00"), f"expiry:{job.pk}:{u1.pk}:2"),
    ]
    assert _expiries(u2) == [(Decimal("-100.00"), f"expiry:{job.pk}:{u2.pk}:2")]
    assert _expiries(u3) == [(Decimal("-100.00"), f"expiry:{job.pk}:{u3.pk}:2")]
    assert [(b.points_balance, b.locked) for b in (u1, u2, u3)] == [(Decimal("0.00"),) * 2] * 3
    assert set(PointLot.objects.values_list("remaining", flat=True)) == {Decimal("0.00")}
    assert OutboxEvent.objects.filter(event_type="loyalty.points.expired").count() == 4
    assert ledger_verify() == []


def test_taken_over_job_over_every_program_expires_lots_due_since(make_program, earn, monkeypatch):
    with at("2025-01-01T10:00:00+00:00"):
        first = make_program(name="A")  # the job runs the programs oldest first
        earn(first, "u1", "100")
    with at("2025-01-01T10:01:00+00:00"):
        second = make_program(name="B")
        earn(second, "u1", "100")
    with at("2025-01-02T08:00:00+00:00"):
        earn(first, "u1", "30")  # due 2026-01-02 08:00, after the first attempt
    revive = _die_after_first_chunk(monkeypatch)
    with at("2026-01-02T03:00:00+00:00"):
        job = job_create(kind=EXPIRY, actor=system_actor("test"))
        with pytest.raises(WorkerKilled):
            job_run(job_id=job.pk)  # program A committed, the worker died in program B
    revive()
    assert member(first, "u1").points_balance == Decimal("30.00")
    with at("2026-01-02T09:00:00+00:00"):
        job_run(job_id=job.pk)

    job.refresh_from_db()
    assert (job.status, job.error) == (Job.Status.SUCCEEDED, "")
    assert "failed" not in job.progress
    a, b = member(first, "u1"), member(second, "u1")
    assert _expiries(a) == [
        (Decimal("-100.00"), f"expiry:{job.pk}:{a.pk}"),
        (Decimal("-30.00"), f"expiry:{job.pk}:{a.pk}:2"),
    ]
    assert _expiries(b) == [(Decimal("-100.00"), f"expiry:{job.pk}:{b.pk}:2")]
    assert (a.points_balance, b.points_balance) == (Decimal("0.00"), Decimal("0.00"))
    assert set(PointLot.objects.values_list("remaining", flat=True)) == {Decimal("0.00")}
    assert ledger_verify() == []


def test_points_a_pending_hold_will_spend_are_not_expired_from_under_it(
    program, earn, run_job, actor
):
    """A capture spends the oldest lots: with a due lot held, expiry takes what is not held,
    so the capture does not then spend points that were never due."""
    with time_machine.travel(datetime.fromisoformat("2025-01-01T10:00:00+00:00"), tick=False):
        earn(program, "u1", "100")  # due 365 days later
    with time_machine.travel(datetime.fromisoformat("2025-06-01T10:00:00+00:00"), tick=False):
        earn(program, "u1", "100")  # not due yet
    with time_machine.travel(datetime.fromisoformat("2026-01-01T09:58:00+00:00"), tick=False):
        redemption = hold(program, "60", actor, member_id="u1")
    with time_machine.travel(datetime.fromisoformat("2026-01-01T10:01:00+00:00"), tick=False):
        job = run_job(Job.Kind.POINT_EXPIRY, program)
        assert job.counts["points_expired_cents"] == 4000
        assert job.counts["members_waiting_on_holds"] == 1
        redemption_capture(redemption_id=redemption.pk, actor=actor)
    balance = member(program, "u1")
    # 100 due: 60 of them redeemed, 40 expired; the second lot's 100 untouched.
    assert balance.points_balance == Decimal("100.00")
    assert ledger_verify() == []
