"""Tier evaluation (the daily job) and the rollback of a tier change.

Thresholds are by points or by spend (`program.tier_basis`). With the default downgrade policy
(`none`, the seed's rule) members only move up, on lifetime points earned (net of clawbacks;
redeeming does not cost a tier) or lifetime spend. With `one_down` or `recalculate` a tier is
earned in a qualifying window (`tier_qualifying_days`): members still move up daily on their
window total, and at the tier-cycle date every member is re-assessed on it (one tier down at
most, or straight to the qualified tier) and the cycle date moves on to its first yearly date
after that day (one review per run, however late the run).

The job reads a chunk of balances (keyset on id) without locks, finds the members whose tier
changes, then locks only those rows (in id order, the order every service uses), recomputes
under the lock and writes the tiers, a snapshot per change, the outbox events and the audit
entries in one short transaction that also records the job's progress.
"""

import calendar
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from django.db import transaction
from django.db.models import Case, DecimalField, F, Max, Q, Sum, Value, When
from django.utils import timezone

from audit.services import audit_record

from ..actors import Actor, system_actor
from ..errors import InvalidState, NotFound
from ..models import Job, LedgerEntry, MemberBalance, OutboxEvent, Program, Tier, TierSnapshot
from ..money import ZERO
from .balances import program_local_date
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
# Ledger entries that count as qualifying points in a window: earning net of clawbacks and
# staff corrections; redemptions and expiry do not cost a member their status.
QUALIFYING_TYPES = (
    LedgerEntry.Type.PURCHASE,
    LedgerEntry.Type.REFUND,
    LedgerEntry.Type.REFERRAL,
    LedgerEntry.Type.CAMPAIGN_BONUS,
    LedgerEntry.Type.MANUAL_ADJUST,
)
UPGRADE, CYCLE = "upgrade", "cycle"


@dataclass(frozen=True)
class Ladder:
    names: tuple[str, ...]  # by rank, lowest first
    thresholds: tuple[Decimal, ...]

    def rank(self, name: str) -> int:
        """The tier's rank; a tier that no longer exists ranks below the first."""
        return self.names.index(name) if name in self.names else -1

    def qualified(self, metric: Decimal) -> int:
        """The highest rank whose threshold `metric` reaches. A tier whose threshold is not
        above every lower tier's is out of reach (programs can no longer be given such tiers,
        `_tiers_ordered`; one set up before is not read as "everyone qualifies")."""
        best, highest = 0, None
        for rank, threshold in enumerate(self.thresholds):
            if highest is not None and threshold <= highest:
                continue
            highest = threshold
            if metric >= threshold:
                best = rank
        return best


@dataclass(frozen=True)
class Change:
    balance_id: int
    from_tier: str
    to_tier: str
    metric: Decimal
    reason: str
    upgrade: bool


def tier_ladder(program: Program, *, lock: bool = False) -> Ladder:
    """The program's tiers; with `lock`, their rows locked until commit (`tiers_locked`)."""
    tiers = tiers_locked(program) if lock else list(Tier.objects.filter(program=program))
    tiers.sort(key=lambda t: t.rank)
    by_spend = program.tier_basis == Program.TierBasis.SPEND
    return Ladder(
        names=tuple(t.name for t in tiers),
        thresholds=tuple(t.min_spend if by_spend else t.min_points for t in tiers),
    )


def tiers_locked(program: Program) -> list[Tier]:
    """The program's tier rows, locked until commit, so that new tiers (`programs.
    program_update`, which locks them before it checks who is on them) wait for the caller's
    tier moves. New tiers replace the rows (delete, insert): a lock that waited for that sees
    neither the old rows (deleted) nor the new (inserted after it began), so it is taken
    again until two in a row find the same rows."""
    rows = Tier.objects.select_for_update().filter(program=program).order_by("pk")
    tiers = list(rows.all())
    while True:
        # A new statement (`all()`: not the cached rows), which sees what committed while the
        # last one waited.
        again = list(rows.all())
        if [t.pk for t in again] == [t.pk for t in tiers]:
            return again
        tiers = again


def tier_metrics(*, program: Program, balance_ids: list[int]) -> dict[int, Decimal]:
    """Each member's qualifying points or spend (lifetime, or in the qualifying window)."""
    by_spend = program.tier_basis == Program.TierBasis.SPEND
    if program.tier_downgrade_policy == Program.DowngradePolicy.NONE:
        field = "lifetime_spend" if by_spend else "lifetime_earned"
        return dict(MemberBalance.objects.filter(pk__in=balance_ids).values_list("pk", field))
    since = timezone.now() - timedelta(days=program.tier_qualifying_days)
    entries = LedgerEntry.objects.filter(balance_id__in=balance_ids, created_at__gte=since).filter(
        # A refund counts against the window of the purchase it claws back: one of a purchase
        # from before the window takes nothing from it (its points were never counted there).
        ~Q(type=LedgerEntry.Type.REFUND) | Q(original_entry__created_at__gte=since)
    )
    if by_spend:
        value = Sum(
            Case(
                When(type=LedgerEntry.Type.PURCHASE, then=F("amount")),
                When(type=LedgerEntry.Type.REFUND, then=-F("amount")),
                default=Value(ZERO),
                output_field=DecimalField(max_digits=20, decimal_places=2),
            )
        )
        entries = entries.filter(type__in=[LedgerEntry.Type.PURCHASE, LedgerEntry.Type.REFUND])
    else:
        value = Sum("points")
        entries = entries.filter(type__in=QUALIFYING_TYPES)
    metrics = dict.fromkeys(balance_ids, ZERO)
    metrics.update(entries.values("balance_id").annotate(v=value).values_list("balance_id", "v"))
    return metrics


def _rollback_pins(program: Program, balance_ids: list[int]) -> dict[int, Decimal]:
    """Members whose latest tier change is a rollback: the qualifying value at that time. The
    job leaves them where the rollback put them until they qualify on more than that."""
    latest = (
        TierSnapshot.objects.filter(balance_id__in=balance_ids)
        .values("balance_id")
        .annotate(last=Max("id"))
        .values("last")
    )
    # In today's basis: a pin in the same basis (points or spend, whatever the window) holds
    # as it is (a window's total is never more than the lifetime's, a shorter window's than
    # a longer one's: the pin holds at least as long). Across a basis switch it becomes what
    # the snapshot recorded in the new basis: the member's lifetime spend, or their points;
    # compared as it was, 100,000 of spend outran 2,000 pinned points at once. A pin recorded
    # before the basis was kept (blank) is taken as points.
    basis = program.tier_basis
    pins = {}
    for balance_id, value, pinned_basis, spend, points in TierSnapshot.objects.filter(
        id__in=latest, rollback_of__isnull=False
    ).values_list(
        "balance_id", "qualifying_value", "qualifying_basis", "lifetime_spend", "points_balance"
    ):
        if (pinned_basis or Program.TierBasis.POINTS) == basis:
            pins[balance_id] = value if value is not None else ZERO
        elif basis == Program.TierBasis.SPEND:
            pins[balance_id] = spend
        else:
            pins[balance_id] = points
    return pins


def _cycle_reason(cycle: date) -> str:
    return f"tier cycle {cycle.isoformat()}"


def _changes(
    program: Program, ladder: Ladder, balance_ids: list[int], mode: str, cycle: date | None
) -> list[Change]:
    rows = MemberBalance.objects.filter(pk__in=balance_ids).values_list("pk", "tier")
    metrics = tier_metrics(program=program, balance_ids=balance_ids)
    basis = program.tier_basis
    changes = []
    if mode == UPGRADE:
        pins = _rollback_pins(program, balance_ids)
        for pk, tier in rows:
            metric, current = metrics[pk], ladder.rank(tier)
            target = ladder.qualified(metric)
            if target <= current or (pk in pins and metric <= pins[pk]):
                continue
            reason = f"upgrade: {basis} {metric} >= {ladder.thresholds[target]}"
            changes.append(Change(pk, tier, ladder.names[target], metric, reason, True))
        return changes
    done = set(
        TierSnapshot.objects.filter(
            balance_id__in=balance_ids, reason__startswith=_cycle_reason(cycle)
        ).values_list("balance_id", flat=True)
    )
    one_down = program.tier_downgrade_policy == Program.DowngradePolicy.ONE_DOWN
    pins = _rollback_pins(program, balance_ids)
    for pk, tier in rows:
        if pk in done:  # re-assessed in this cycle already (a re-run after a crash)
            continue
        metric, current = metrics[pk], ladder.rank(tier)
        qualified = ladder.qualified(metric)
        # one_down: at most one tier lower per cycle; recalculate: straight to the qualified tier.
        target = min(current, max(qualified, current - 1)) if one_down else qualified
        if target == current or target < 0:
            continue
        if target > current and pk in pins and metric <= pins[pk]:
            continue  # an upgrade rolled back stays so until more is earned (as in UPGRADE)
        reason = f"{_cycle_reason(cycle)}: {basis} {metric} in {program.tier_qualifying_days} days"
        changes.append(Change(pk, tier, ladder.names[target], metric, reason, target > current))
    return changes


def tiers_evaluate(*, job: Job, tracker: JobTracker) -> None:
    """The tier job over its program (or every active program)."""
    actor = system_actor(job.kind)
    if job_attempt(job) > 1:
        # A takeover reviews every member again from the first: counted once, not on top of
        # what the dead run counted (its changes stand, and are not made again).
        for name in ("evaluated", "cycle_reviewed"):
            tracker.counts.pop(name, None)
        tracker.save()  # committed, so a part failing before any chunk does not restore them

    def evaluate(program: Program) -> None:
        ladder = tier_ladder(program)
        if len(ladder.names) < 2:
            return
        cycle, today = program.tier_cycle_date, program_local_date(program)
        if (
            program.tier_downgrade_policy != Program.DowngradePolicy.NONE
            and cycle is not None
            and today >= cycle
        ):
            _pass(program, ladder, CYCLE, cycle, job, tracker, actor)
            _cycle_advance(program=program, cycle=cycle, today=today, actor=actor)
        _pass(program, ladder, UPGRADE, None, job, tracker, actor)

    each_part(job, tracker, job_programs(job), evaluate)


def _pass(program, ladder, mode, cycle, job, tracker, actor) -> None:
    last = 0
    while True:
        ids = list(
            MemberBalance.objects.filter(program=program, pk__gt=last)
            .order_by("pk")
            .values_list("pk", flat=True)[:CHUNK]
        )
        if not ids:
            return
        changed = [c.balance_id for c in _changes(program, ladder, ids, mode, cycle)]
        # Every member is evaluated by the upgrade pass; the cycle's review counts apart.
        tracker.add(**{"evaluated" if mode == UPGRADE else "cycle_reviewed": len(ids)})
        progress = {"program_id": str(program.pk), "phase": mode, "last_balance_id": ids[-1]}
        if changed:
            _apply(program, ladder, changed, mode, cycle, job, tracker, actor, progress)
        else:
            tracker.save(**progress)
        last = ids[-1]


@transaction.atomic(durable=True)
def _apply(program, ladder, balance_ids, mode, cycle, job, tracker, actor, progress) -> None:
    """Locks the members about to change, recomputes under the lock, writes every change."""
    now = timezone.now()
    balances = {
        b.pk: b
        for b in MemberBalance.objects.select_for_update().filter(pk__in=balance_ids).order_by("pk")
    }
    # The tiers as they are now (the job read them when it started), held until commit: no
    # member is moved onto a tier the program has dropped meanwhile.
    ladder = tier_ladder(program, lock=True)
    if len(ladder.names) < 2:
        return  # its tiers were replaced by fewer than two meanwhile: no one moves
    changes = _changes(program, ladder, list(balances), mode, cycle)
    updated = []
    for change in changes:
        balance = balances[change.balance_id]
        balance.tier, balance.tier_updated_at, balance.updated_at = change.to_tier, now, now
        updated.append(balance)
    bulk_set(MemberBalance, updated, ["tier", "tier_updated_at", "updated_at"])
    snapshots = [
        TierSnapshot(
            balance_id=c.balance_id,
            program=program,
            from_tier=c.from_tier,
            to_tier=c.to_tier,
            reason=c.reason[:200],
            points_balance=balances[c.balance_id].points_balance,
            lifetime_spend=balances[c.balance_id].lifetime_spend,
            qualifying_value=c.metric,
            qualifying_basis=program.tier_basis,
            actor_id=actor.id,
            job=job,
        )
        for c in changes
    ]
    copy_insert(TierSnapshot, snapshots)
    events = [_event(program, balances[s.balance_id], s, "upgraded" if c.upgrade else "downgraded")
              for s, c in zip(snapshots, changes, strict=True)]  # fmt: skip
    copy_insert(OutboxEvent, events)
    audit_many(
        actor=actor,
        action="balance.tier_change",
        entity_type="balance",
        merchant_id=program.merchant_id,
        rows=[
            (s.balance_id, {"from_tier": s.from_tier, "to_tier": s.to_tier, "reason": s.reason,
                            "snapshot_id": s.pk})
            for s in snapshots
        ],
    )  # fmt: skip
    upgraded = sum(c.upgrade for c in changes)
    tracker.add(upgraded=upgraded, downgraded=len(changes) - upgraded)
    tracker.save(**progress)


def _event(program: Program, balance: MemberBalance, snapshot: TierSnapshot, verb: str):
    return OutboxEvent(
        merchant_id=program.merchant_id,
        program=program,
        event_type=f"loyalty.tier.{verb}",
        payload={
            "program_id": str(program.pk),
            "member_id": balance.member_id,
            "from_tier": snapshot.from_tier,
            "to_tier": snapshot.to_tier,
            "reason": snapshot.reason,
            "snapshot_id": snapshot.pk,
        },
    )


def _next_cycle(cycle: date, today: date) -> date:
    """The first yearly date of `cycle` strictly after `today` (a 29 February cycle falls on
    the 28th in other years): one review per run however late it is, never one per year
    missed (a date years in the past would otherwise review, and take members one tier down,
    on each of the following days)."""
    years = max(1, today.year - cycle.year)
    while True:
        year = cycle.year + years
        anniversary = date(
            year, cycle.month, min(cycle.day, calendar.monthrange(year, cycle.month)[1])
        )
        if anniversary > today:
            return anniversary
        years += 1


@transaction.atomic(durable=True)
def _cycle_advance(*, program: Program, cycle: date, today: date, actor: Actor) -> None:
    """Moves the cycle date on to its next yearly date after `today` (the program's local day
    of the review) once every member has been re-assessed."""
    next_cycle = _next_cycle(cycle, today)
    moved = Program.objects.filter(pk=program.pk, tier_cycle_date=cycle).update(
        tier_cycle_date=next_cycle, updated_at=timezone.now()
    )
    if moved:
        program.tier_cycle_date = next_cycle
        audit_record(
            actor=actor,
            action="program.tier_cycle",
            entity_type="program",
            entity_id=program.pk,
            merchant_id=program.merchant_id,
            before={"tier_cycle_date": cycle.isoformat()},
            after={"tier_cycle_date": program.tier_cycle_date.isoformat()},
        )


@transaction.atomic(durable=True)
def tier_rollback(*, snapshot_id: int, actor: Actor, reason: str = "") -> TierSnapshot:
    """Restores the tier a change replaced, once, if the member is still on the changed tier;
    records the rollback as a snapshot of its own."""
    balance_id = (
        TierSnapshot.objects.filter(pk=snapshot_id).values_list("balance_id", flat=True).first()
    )
    if balance_id is None:
        raise NotFound("No such tier snapshot.", snapshot_id=snapshot_id)
    # Lock order: the member's balance row, then the snapshot.
    balance = (
        MemberBalance.objects.select_for_update(of=("self",))  # not the program row
        .select_related("program")
        .get(pk=balance_id)
    )
    snapshot = TierSnapshot.objects.select_for_update().get(pk=snapshot_id)
    if snapshot.rollback_of_id is not None:
        raise InvalidState("A rollback cannot itself be rolled back.", snapshot_id=snapshot_id)
    if snapshot.rolled_back_at is not None:
        raise InvalidState("This tier change was already rolled back.", snapshot_id=snapshot_id)
    latest = (
        TierSnapshot.objects.filter(balance=balance).order_by("-id").values_list("id", flat=True)
    )
    if balance.tier != snapshot.to_tier or latest.first() != snapshot.pk:
        # An older change that happens to end on today's tier is not what put them there.
        raise InvalidState(
            "The member's tier changed since; roll back the latest change first.",
            current_tier=balance.tier,
            snapshot_to_tier=snapshot.to_tier,
        )
    program = balance.program
    # Locked until commit, as `programs.program_update` locks the tiers before it checks.
    if snapshot.from_tier not in {t.name for t in tiers_locked(program)}:
        # The program's tiers were changed since: the member would sit on no tier at all.
        raise InvalidState(
            "The tier this change replaced is no longer one of the program's tiers.",
            snapshot_from_tier=snapshot.from_tier,
        )
    now = timezone.now()
    metric = tier_metrics(program=program, balance_ids=[balance.pk])[balance.pk]
    balance.tier, balance.tier_updated_at = snapshot.from_tier, now
    balance.save(update_fields=["tier", "tier_updated_at", "updated_at"])
    rollback = TierSnapshot.objects.create(
        balance=balance,
        program=program,
        from_tier=snapshot.to_tier,
        to_tier=snapshot.from_tier,
        reason=(f"rollback of #{snapshot.pk}" + (f": {reason}" if reason else ""))[:200],
        points_balance=balance.points_balance,
        lifetime_spend=balance.lifetime_spend,
        qualifying_value=metric,
        qualifying_basis=program.tier_basis,
        actor_id=actor.id,
        rollback_of=snapshot,
    )
    snapshot.rolled_back_at = now
    snapshot.save(update_fields=["rolled_back_at"])
    audit_record(
        actor=actor,
        action="balance.tier_rollback",
        entity_type="balance",
        entity_id=balance.pk,
        merchant_id=program.merchant_id,
        before={"tier": snapshot.to_tier},
        after={"tier": snapshot.from_tier, "snapshot_id": snapshot.pk, "reason": reason},
    )
    OutboxEvent.objects.create(
        merchant_id=program.merchant_id,
        program=program,
        event_type="loyalty.tier.rolled_back",
        payload={
            "program_id": str(program.pk),
            "member_id": balance.member_id,
            "from_tier": snapshot.to_tier,
            "to_tier": snapshot.from_tier,
            "snapshot_id": rollback.pk,
            "rollback_of": snapshot.pk,
        },
    )
    return rollback
