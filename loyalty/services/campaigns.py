"""Campaign execution (the hourly job): bonus points to a segment, at most once per member.

Due campaigns are `scheduled` (or `running`, resumed after a crash) with `scheduled_at` past.
The start lists the segment's members as of then, a pending award row each (one INSERT ...
SELECT); runs pay the pending ones, keyset on balance id. Per chunk, one short transaction:
lock the balance rows in id order (the lock every member write takes first), re-read which
awards are still pending under the lock (a concurrent run may have paid them while we
waited), apply the normal earning rules (frozen
or fraud-review members are refused, the daily cap in the program's time zone, one budget
charge for the chunk through the sharded budget, spread in id order), then write the award
rows, ledger entries (idempotency key `campaign:<id>:<member>`), lots, balances, outbox events,
audit entries and the campaign's counts together. `CampaignAward(campaign, balance)` is unique
in the database, so no member is awarded twice whatever the number of runs or workers.

This is the bulk equivalent of `event_ingest` with type `campaign_bonus` (one transaction per
member would not award 100,000 members within the hour on two cores); it keeps the same
invariants: balance == sum(entries), lots == max(balance, 0), budget never overspent.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db import connection, transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from audit.services import audit_record

from ..actors import Actor, system_actor
from ..errors import BudgetExhausted, LedgerLimitExceeded, ValidationFailed
from ..models import (
    Campaign,
    CampaignAward,
    Job,
    LedgerEntry,
    MemberBalance,
    OutboxEvent,
    PointLot,
    Program,
)
from ..money import ZERO
from .balances import (
    REFUND_DEBT_FLAG,
    fraud_flag_remove,
    has_blocking_flag,
    lot_expiry,
    program_local_date,
    totals_fit,
)
from .budget import budget_charge
from .ingestion import EventInput, balance_snapshot
from .jobs import JobTracker, audit_many, bulk_set, copy_insert, each_part

CHUNK = 2000
# Segment definitions from the seed. The spend threshold is in the program's currency.
INACTIVE_DAYS = 30
AT_RISK_CHURN = Decimal("0.7")
HIGH_VALUE_SPEND = Decimal("5000")


def segment_q(segment: str, *, now) -> Q:
    """The members of a segment, as a filter on MemberBalance."""
    if segment == Campaign.Segment.ALL:
        return Q()
    if segment == Campaign.Segment.INACTIVE:
        cutoff = now - timedelta(days=INACTIVE_DAYS)
        return Q(last_activity_at__isnull=True) | Q(last_activity_at__lt=cutoff)
    if segment == Campaign.Segment.AT_RISK:
        return Q(churn_risk__gt=AT_RISK_CHURN)
    if segment == Campaign.Segment.HIGH_VALUE:
        return Q(lifetime_spend__gt=HIGH_VALUE_SPEND)
    if segment.startswith("tier_") and segment in Campaign.Segment.values:
        return Q(tier=segment.removeprefix("tier_"))
    raise ValidationFailed(errors={"segment": [f"Unknown segment {segment!r}."]})


def pending_awards(campaign: Campaign):
    """The awards the campaign has still to pay: its members as its start listed them
    (`_members_list`), by the unique (campaign, balance) index."""
    return CampaignAward.objects.filter(campaign=campaign, status=CampaignAward.Status.PENDING)


def _members_list(campaign: Campaign) -> int:
    """A pending award for each member of the segment as of the campaign's start
    (`started_at`): members who had joined by then, inactive (at risk, on the tier...) then.
    One statement, in the start's transaction. Read chunk by chunk instead, a member of the
    segment at the start whose state changed before their chunk (a win-back's member buying
    meanwhile, a long or resumed run) would not be paid, and members falling into the segment
    or joining during a long run would be paid as they came. Returns how many were listed."""
    as_of = campaign.started_at
    has_award = CampaignAward.objects.filter(campaign=campaign, balance=OuterRef("pk"))
    members = (
        MemberBalance.objects.filter(program_id=campaign.program_id, created_at__lte=as_of)
        .filter(segment_q(campaign.segment, now=as_of))
        .exclude(Exists(has_award))  # awarded before the listing (a campaign started earlier)
        .annotate(listed_id=F("pk"))
        .values("listed_id")
    )
    select, params = members.query.sql_with_params()
    qn = connection.ops.quote_name
    meta = CampaignAward._meta
    columns = ", ".join(
        qn(meta.get_field(name).column)
        for name in ("campaign", "balance", "status", "error_code", "created_at")
    )
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {qn(meta.db_table)} ({columns})"  # noqa: S608 (the model's names)
            f" SELECT %s, m.listed_id, %s, '', %s FROM ({select}) AS m",
            [
                meta.get_field("campaign").get_db_prep_value(campaign.pk, connection),
                CampaignAward.Status.PENDING.value,
                meta.get_field("created_at").get_db_prep_value(now, connection),
                *params,
            ],
        )
        listed = cursor.rowcount
    campaign.members_listed_at = now
    campaign.save(update_fields=["members_listed_at", "updated_at"])
    return listed


def campaigns_execute(*, job: Job, tracker: JobTracker) -> None:
    """The campaign job: every due campaign of its program (or of every active program)."""
    due = Campaign.objects.filter(
        status__in=[Campaign.Status.SCHEDULED, Campaign.Status.RUNNING],
        scheduled_at__lte=timezone.now(),
        program__status=Program.Status.ACTIVE,
    )
    if job.program_id is not None:
        due = due.filter(program_id=job.program_id)
    actor = system_actor(job.kind)
    each_part(
        job,
        tracker,
        list(due.order_by("scheduled_at", "pk")),
        lambda campaign: campaign_execute(campaign_id=campaign.pk, actor=actor, tracker=tracker),
    )


def campaign_execute(
    *, campaign_id, actor: Actor, tracker: JobTracker | None = None
) -> Campaign | None:
    """Awards the campaign's segment; safe to run again or concurrently. Returns the campaign,
    or None when it is not due (draft, cancelled, completed)."""
    campaign = _campaign_start(campaign_id=campaign_id, actor=actor)
    if campaign is None:
        return None
    last = 0
    while True:
        program = Program.objects.get(pk=campaign.program_id)
        if program.status != Program.Status.ACTIVE:
            return campaign  # stays running; resumes when the program is active again
        ids = list(
            pending_awards(campaign)
            .filter(balance_id__gt=last)
            .order_by("balance_id")
            .values_list("balance_id", flat=True)[:CHUNK]
        )
        if not ids:
            break
        _award_chunk(campaign=campaign, program=program, balance_ids=ids, actor=actor,
                     tracker=tracker)  # fmt: skip
        last = ids[-1]
    return _campaign_finish(campaign_id=campaign.pk, actor=actor)


@transaction.atomic(durable=True)
def _campaign_start(*, campaign_id, actor: Actor) -> Campaign | None:
    campaign = Campaign.objects.select_for_update().filter(pk=campaign_id).first()
    if campaign is None or campaign.status not in (
        Campaign.Status.SCHEDULED,
        Campaign.Status.RUNNING,
    ):
        return None
    if campaign.status == Campaign.Status.SCHEDULED and campaign.scheduled_at > timezone.now():
        return None  # not due: postponed since the job listed it, say
    if campaign.status == Campaign.Status.SCHEDULED:
        campaign.status = Campaign.Status.RUNNING
        campaign.started_at = timezone.now()
        campaign.save(update_fields=["status", "started_at", "updated_at"])
        _audit_campaign(actor, campaign, "campaign.start", before="scheduled")
    if campaign.members_listed_at is None:
        _members_list(campaign)
    return campaign


@transaction.atomic(durable=True)
def _campaign_finish(*, campaign_id, actor: Actor) -> Campaign:
    campaign = Campaign.objects.select_for_update().get(pk=campaign_id)
    if campaign.status != Campaign.Status.RUNNING or pending_awards(campaign).exists():
        return campaign  # another run finished it, or members are still being awarded
    campaign.status = Campaign.Status.COMPLETED
    campaign.finished_at = timezone.now()
    campaign.save(update_fields=["status", "finished_at", "updated_at"])
    _audit_campaign(actor, campaign, "campaign.complete", before="running")
    return campaign


def _audit_campaign(actor: Actor, campaign: Campaign, action: str, *, before: str) -> None:
    audit_record(
        actor=actor,
        action=action,
        entity_type="campaign",
        entity_id=campaign.pk,
        merchant_id=campaign.program.merchant_id,
        before={"status": before},
        after={
            "status": campaign.status,
            "awarded_count": campaign.awarded_count,
            "failed_count": campaign.failed_count,
        },
    )


@dataclass
class _Award:
    balance: MemberBalance
    points: Decimal = ZERO
    error: str = ""
    capped_by: str | None = None
    earned_today: Decimal = ZERO


def _plan(
    campaign: Campaign, program: Program, balances: Iterable[MemberBalance], today
) -> list[_Award]:
    """The earning rules of `event_ingest` for a campaign bonus, per member of the chunk."""
    plan = []
    for balance in balances:
        award = _Award(balance=balance)
        award.earned_today = balance.earned_today if balance.earned_day == today else ZERO
        if balance.is_frozen:
            award.error = "account_frozen"
        elif not totals_fit(balance, campaign.bonus_points, point_value=program.point_value):
            award.error = "ledger_limit_exceeded"
        elif program.fraud_detection_enabled and has_blocking_flag(balance):
            award.error = "fraud_review"
        else:
            award.points = campaign.bonus_points
            if program.max_earn_per_day is not None:
                allowance = max(program.max_earn_per_day - award.earned_today, ZERO)
                if award.points > allowance:
                    award.points, award.capped_by = allowance, "daily_cap"
            if award.points <= 0:
                award.error = "daily_cap_reached"
        plan.append(award)
    wanted = sum((a.points for a in plan if not a.error), ZERO)
    if wanted <= 0:
        return plan
    # One charge for the whole chunk: the budget shards are locked once, after the balances.
    refusal = "budget_exhausted"
    try:
        affordable = budget_charge(program=program, points=wanted, allow_partial=True)
    except BudgetExhausted:
        affordable = ZERO
    except LedgerLimitExceeded:  # the budget's spending total is full (no limit set)
        affordable, refusal = ZERO, "ledger_limit_exceeded"
    for award in plan:  # in balance id order: the budget runs out at the same member every run
        if award.error:
            continue
        if award.points > affordable:
            award.points, award.capped_by = affordable, "budget"
        affordable -= award.points
        if award.points <= 0:
            award.error = refusal
    return plan


@transaction.atomic(durable=True)
def _award_chunk(
    *,
    campaign: Campaign,
    program: Program,
    balance_ids: list[int],
    actor: Actor,
    tracker: JobTracker | None,
) -> None:
    now = timezone.now()
    today = program_local_date(program, now)
    locked = list(
        MemberBalance.objects.select_for_update().filter(pk__in=balance_ids).order_by("pk")
    )
    # Fresh read after the locks: a concurrent run may have awarded some while we waited.
    pending = {
        award.balance_id: award
        for award in pending_awards(campaign).filter(balance_id__in=balance_ids)
    }
    plan = _plan(campaign, program, (b for b in locked if b.pk in pending), today)
    awarded = [a for a in plan if not a.error]

    entries, flags_changed = [], []
    reason = f"campaign {campaign.name}"[:500]
    reference = f"campaign:{campaign.pk}"
    befores = {}
    for award in awarded:
        balance = award.balance
        befores[balance.pk] = balance.points_balance
        balance.points_balance += award.points
        balance.lifetime_earned += award.points
        balance.earned_today = award.earned_today + award.points
        balance.earned_day = today
        balance.updated_at = now
        # A campaign bonus is not member activity: last_activity_at stays, so the member
        # remains visible to the next win-back campaign.
        if befores[balance.pk] < 0 <= balance.points_balance:
            fraud_flag_remove(balance, REFUND_DEBT_FLAG)  # the refund debt is repaid
            flags_changed.append(balance)
        key = f"campaign:{campaign.pk}:{balance.member_id}"
        fingerprint = EventInput(
            type="campaign_bonus",
            member_id=balance.member_id,
            idempotency_key=key,
            points=award.points,
            reason=reason,
            reference=reference,
            metadata={"campaign_id": str(campaign.pk)},  # the entry's, below
        ).fingerprint()
        breakdown = {
            "base_points": str(award.points),
            "uncapped_points": str(campaign.bonus_points),
            "capped_by": award.capped_by,
            "capped_points": str(campaign.bonus_points - award.points),
        }
        entries.append(
            LedgerEntry(
                program=program,
                balance=balance,
                type=LedgerEntry.Type.CAMPAIGN_BONUS,
                points=award.points,
                reference=reference,
                idempotency_key=key,
                balance_after=balance.points_balance,
                reason=reason,
                details={
                    "breakdown": breakdown,
                    "sira": None,
                    "member_id": balance.member_id,
                    "fingerprint": fingerprint,
                    "balance": balance_snapshot(balance),
                    "campaign_id": str(campaign.pk),
                },
                metadata={"campaign_id": str(campaign.pk)},
                actor_id=actor.id,
                actor_role=actor.role,
                occurred_at=now,
            )
        )
    copy_insert(LedgerEntry, entries)
    lots = []
    for entry in entries:
        gained = max(entry.balance_after, ZERO) - max(befores[entry.balance_id], ZERO)
        if gained > 0:  # a gain first repays any refund debt; the rest forms a lot
            lots.append(
                PointLot(
                    balance_id=entry.balance_id,
                    program=program,
                    entry=entry,
                    points=gained,
                    remaining=gained,
                    earned_at=entry.created_at,
                    expires_at=lot_expiry(program, entry.created_at),
                )
            )
    copy_insert(PointLot, lots)
    bulk_set(
        MemberBalance,
        [a.balance for a in awarded],
        ["points_balance", "lifetime_earned", "earned_today", "earned_day", "updated_at"],
    )
    if flags_changed:
        MemberBalance.objects.bulk_update(flags_changed, ["fraud_flags"])
    by_balance = {e.balance_id: e for e in entries}
    awards = []
    for a in plan:
        award = pending[a.balance.pk]
        entry = by_balance.get(a.balance.pk)
        award.entry_id = None if entry is None else entry.pk
        award.status = CampaignAward.Status.FAILED if a.error else CampaignAward.Status.AWARDED
        award.error_code = a.error
        awards.append(award)
    bulk_set(CampaignAward, awards, ["entry", "status", "error_code"])
    copy_insert(
        OutboxEvent,
        [
            OutboxEvent(
                merchant_id=program.merchant_id,
                program=program,
                event_type="loyalty.points.earned",
                payload={
                    "program_id": str(program.pk),
                    "transaction_id": str(e.pk),
                    "member_id": e.balance.member_id,
                    "type": e.type,
                    "points": str(e.points),
                    "balance": e.details["balance"],
                    "reference": e.reference,
                    "campaign_id": str(campaign.pk),
                },
            )
            for e in entries
        ],
    )
    audit_many(
        actor=actor,
        action="transaction.campaign_bonus",
        entity_type="transaction",
        merchant_id=program.merchant_id,
        rows=[
            (e.pk, {"member_id": e.balance.member_id, "points": str(e.points),
                    "balance_after": str(e.balance_after), "reference": e.reference})
            for e in entries
        ],
    )  # fmt: skip
    failed = len(plan) - len(awarded)
    Campaign.objects.filter(pk=campaign.pk).update(
        awarded_count=F("awarded_count") + len(awarded),
        failed_count=F("failed_count") + failed,
        updated_at=now,
    )
    if tracker is not None:
        tracker.add(awarded=len(awarded), failed=failed)
        tracker.save(campaign_id=str(campaign.pk), last_balance_id=balance_ids[-1])
