"""Point expiry (the daily job): lots past their date expire exactly once, oldest first.

Per chunk of members with due lots (keyset on balance id), one short transaction: lock the
balance rows in id order (the lock every member write takes first, and which guards the
member's lots), re-read the due lots under the lock, take from them oldest first at most what
the member has available (balance - locked: points held by a pending redemption stay until
the hold is captured or released; the rest of the lot waits for a later run), then write one
`expiry` ledger entry per member, the lots, the balance, the outbox events and the audit
entries, and the job's progress. A crash rolls back the chunk in flight only; lots already
expired have nothing left, so a re-run can never expire them twice.

The same job sends `loyalty.points.expiring` once per lot, `expiry_warning_days` before.
"""

from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from ..actors import system_actor
from ..models import Job, LedgerEntry, MemberBalance, OutboxEvent, PointLot, Program
from ..money import ZERO
from .ingestion import balance_snapshot
from .jobs import (
    JobTracker,
    audit_many,
    bulk_set,
    copy_insert,
    each_part,
    job_attempt,
    job_programs,
)

CHUNK = 2000


def points_expire(*, job: Job, tracker: JobTracker) -> None:
    """The expiry job over its program (or every program that is not closed)."""
    statuses = (Program.Status.ACTIVE, Program.Status.SUSPENDED)

    def expire(program: Program) -> None:
        if not program.expiry_days and not _has_dated_lots(program):
            return
        _expire_program(program, job, tracker)
        if program.expiry_warning_days:
            _warn_program(program, tracker)

    each_part(job, tracker, job_programs(job, statuses=statuses), expire)


def _has_dated_lots(program: Program) -> bool:
    # Lots keep the date they were earned with, even if the program stopped expiring points.
    return PointLot.objects.filter(
        program=program, remaining__gt=0, expires_at__isnull=False
    ).exists()


def _expire_program(program: Program, job: Job, tracker: JobTracker) -> None:
    now = timezone.now()
    last = 0
    while True:
        ids = list(
            PointLot.objects.filter(
                program=program, remaining__gt=0, expires_at__lte=now, balance_id__gt=last
            )
            .order_by("balance_id")
            .values_list("balance_id", flat=True)
            .distinct()[:CHUNK]
        )
        if not ids:
            return
        _expire_chunk(program=program, balance_ids=ids, now=now, job=job, tracker=tracker)
        last = ids[-1]


@transaction.atomic(durable=True)
def _expire_chunk(
    *, program: Program, balance_ids: list[int], now, job: Job, tracker: JobTracker
) -> None:
    balances = {
        b.pk: b
        for b in MemberBalance.objects.select_for_update().filter(pk__in=balance_ids).order_by("pk")
    }
    # Every open lot, in the order a capture spends them (`lots_consume`: oldest first).
    open_lots = PointLot.objects.filter(balance_id__in=balance_ids, remaining__gt=0).order_by(
        "balance_id", "id"
    )
    lots_by_member: dict[int, list[PointLot]] = defaultdict(list)
    for lot in open_lots:
        lots_by_member[lot.balance_id].append(lot)

    actor = system_actor(job.kind)
    changed_lots: list[PointLot] = []
    expired: dict[int, tuple[Decimal, list[dict]]] = {}
    waiting = 0
    for balance_id, lots in lots_by_member.items():
        balance = balances[balance_id]
        # Points held by pending redemptions are not the job's to take: the lots their
        # capture will spend are set aside first, and only what is left of a due lot expires
        # (else the capture would then spend points that were not due).
        held, free = balance.locked, {}
        for lot in lots:
            set_aside = min(lot.remaining, held)
            held -= set_aside
            free[lot.pk] = lot.remaining - set_aside
        room = max(balance.points_balance - balance.locked, ZERO)
        due = sorted(
            (lot for lot in lots if lot.expires_at is not None and lot.expires_at <= now),
            key=lambda lot: (lot.expires_at, lot.pk),
        )
        taken_total, taken = ZERO, []
        for lot in due:
            take = min(free[lot.pk], room - taken_total)
            if take <= 0:
                continue
            lot.remaining -= take
            taken_total += take
            taken.append({"lot_id": lot.pk, "points": str(take)})
            changed_lots.append(lot)
        if taken_total > 0:
            expired[balance_id] = (taken_total, taken)
        if any(lot.remaining > 0 for lot in due):
            waiting += 1  # due points kept for a pending redemption: a later run takes them

    bulk_set(PointLot, changed_lots, ["remaining"])
    entries = []
    for balance_id, (points, taken) in expired.items():
        balance = balances[balance_id]
        balance.points_balance -= points
        balance.updated_at = now
        entries.append(
            LedgerEntry(
                program=program,
                balance=balance,
                type=LedgerEntry.Type.EXPIRY,
                points=-points,
                idempotency_key=_entry_key(job, balance_id),
                balance_after=balance.points_balance,
                reason="points expired",
                details={
                    "member_id": balance.member_id,
                    "balance": balance_snapshot(balance),
                    "lots": taken,
                    "job_id": str(job.pk),
                },
                actor_id=actor.id,
                actor_role=actor.role,
                occurred_at=now,
            )
        )
    copy_insert(LedgerEntry, entries)
    bulk_set(MemberBalance, [balances[pk] for pk in expired], ["points_balance", "updated_at"])
    copy_insert(
        OutboxEvent,
        [
            OutboxEvent(
                merchant_id=program.merchant_id,
                program=program,
                event_type="loyalty.points.expired",
                payload={
                    "program_id": str(program.pk),
                    "transaction_id": str(entry.pk),
                    "member_id": entry.balance.member_id,
                    "points": str(entry.points),
                    "balance": entry.details["balance"],
                },
            )
            for entry in entries
        ],
    )
    audit_many(
        actor=actor,
        action="transaction.expiry",
        entity_type="transaction",
        merchant_id=program.merchant_id,
        rows=[
            (e.pk, {"member_id": e.balance.member_id, "points": str(e.points),
                    "balance_after": str(e.balance_after)})
            for e in entries
        ],
    )  # fmt: skip
    tracker.add(
        members_expired=len(expired),
        lots_touched=len(changed_lots),
        points_expired_cents=int(sum((p for p, _ in expired.values()), ZERO) * 100),
        members_waiting_on_holds=waiting,
    )
    tracker.save(program_id=str(program.pk), phase="expire", last_balance_id=balance_ids[-1])


def _entry_key(job: Job, balance_id: int) -> str:
    """One entry per member per attempt of the job. The lots, not this key, make expiry exactly
    once (re-read under the balance lock; an expired lot has nothing left). A takeover of a
    dead worker's run goes over every member again, and one that a committed chunk already
    expired may have due points again (a hold released, lots fallen due since): a key per job
    alone would refuse that member's whole chunk, so the key names the attempt after the first.
    Resuming after `last_balance_id` instead would not be enough: a job over every program runs
    the programs done before the crash again, and it would leave those points to tomorrow."""
    attempt = job_attempt(job)
    suffix = f":{attempt}" if attempt > 1 else ""
    return f"expiry:{job.pk}:{balance_id}{suffix}"


def _warn_program(program: Program, tracker: JobTracker) -> None:
    now = timezone.now()
    horizon = now + timedelta(days=program.expiry_warning_days)
    last = 0
    while True:
        ids = list(
            PointLot.objects.filter(
                program=program,
                remaining__gt=0,
                expiry_warned_at__isnull=True,
                expires_at__gt=now,
                expires_at__lte=horizon,
                balance_id__gt=last,
            )
            .order_by("balance_id")
            .values_list("balance_id", flat=True)
            .distinct()[:CHUNK]
        )
        if not ids:
            return
        _warn_chunk(program=program, balance_ids=ids, now=now, horizon=horizon, tracker=tracker)
        last = ids[-1]


@transaction.atomic(durable=True)
def _warn_chunk(*, program: Program, balance_ids: list[int], now, horizon, tracker) -> None:
    """One `loyalty.points.expiring` event per member for lots not yet warned about."""
    # The balance lock guards the member's lots (redemptions update them under it).
    members = dict(
        MemberBalance.objects.select_for_update()
        .filter(pk__in=balance_ids)
        .order_by("pk")
        .values_list("pk", "member_id")
    )
    lots = list(
        PointLot.objects.filter(
            balance_id__in=balance_ids,
            remaining__gt=0,
            expiry_warned_at__isnull=True,
            expires_at__gt=now,
            expires_at__lte=horizon,
        ).order_by("balance_id", "expires_at", "id")
    )
    PointLot.objects.filter(pk__in=[lot.pk for lot in lots]).update(expiry_warned_at=now)
    by_member: dict[int, list[PointLot]] = defaultdict(list)
    for lot in lots:
        by_member[lot.balance_id].append(lot)
    copy_insert(
        OutboxEvent,
        [
            OutboxEvent(
                merchant_id=program.merchant_id,
                program=program,
                event_type="loyalty.points.expiring",
                payload={
                    "program_id": str(program.pk),
                    "member_id": members[balance_id],
                    "points": str(sum((lot.remaining for lot in member_lots), ZERO)),
                    "first_expires_at": member_lots[0].expires_at.isoformat(),
                    "lots": [
                        {"points": str(lot.remaining), "expires_at": lot.expires_at.isoformat()}
                        for lot in member_lots
                    ],
                },
            )
            for balance_id, member_lots in by_member.items()
        ],
    )
    tracker.add(members_warned=len(by_member))
    tracker.save(program_id=str(program.pk), phase="warn", last_balance_id=balance_ids[-1])
