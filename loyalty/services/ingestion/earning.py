"""The earning rules of purchase, referral and campaign_bonus (rate, tier, SIRA, daily cap,
budget), and their write on the ORM path."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, localcontext

from django.utils import timezone

from sira.scoring import MemberFacts, sira_score_purchase, sira_settings_resolve

from ...actors import Actor
from ...errors import AccountFrozen, FraudReview, LedgerLimitExceeded
from ...models import LedgerEntry, MemberBalance, Program
from ...money import EXACT, ZERO, points_floor
from ..balances import (
    REFUND_DEBT_FLAG,
    fraud_flag_remove,
    has_blocking_flag,
    lots_settle,
    program_local_date,
    totals_fit,
)
from ..budget import budget_charge
from ..outbox import outbox_publish
from .entries import _entry_write, _event_payload
from .inputs import EventInput


@dataclass
class Earning:
    """What the earning rules decided for one event, already applied to the balance in memory."""

    points: Decimal
    before: Decimal  # points_balance before the event
    fields: list[str]  # the balance fields it changed
    details: dict  # breakdown, SIRA score and point value, stored on the ledger entry


# The balance fields an earning changes, apart from fraud_flags (a repaid refund debt); the
# batch path writes EARN_FIELDS for every balance it touched.
EARNING_FIELDS = [
    "points_balance",
    "lifetime_earned",
    "earned_today",
    "earned_day",
    "last_activity_at",
]
PURCHASE_FIELDS = ["lifetime_spend", "purchase_count", "last_purchase_at"]
EARN_FIELDS = EARNING_FIELDS + PURCHASE_FIELDS


def earn_apply(
    *,
    program: Program,
    balance: MemberBalance,
    event: EventInput,
    now: datetime,
    charge: Callable[[Decimal], Decimal],
) -> Earning:
    """The earning rules of one purchase, referral or campaign_bonus on the locked `balance`,
    in memory. `charge(points)` pays the budget: it returns the points paid for or raises
    BudgetExhausted. Every refusal comes before any change. Shared by `event_ingest` and the
    set-based batch, so both award exactly the same."""
    _refuse_blocked(program, balance)
    today = program_local_date(program, now)
    earned_today = balance.earned_today if balance.earned_day == today else ZERO
    sira = None
    if event.type == "purchase":
        with localcontext(EXACT):  # exact products, whatever the rates (the limit refuses)
            uncapped, breakdown, sira = _purchase_points(program, balance, event, now, today)
    else:
        uncapped = event.points
        breakdown = {"base_points": str(uncapped)}

    spend = event.amount if event.type == "purchase" else ZERO
    if not totals_fit(balance, uncapped, point_value=program.point_value, spend=spend):
        raise LedgerLimitExceeded(member_id=balance.member_id)  # (capped points are fewer)
    points, capped_by = uncapped, None
    if program.max_earn_per_day is not None:
        allowance = max(program.max_earn_per_day - earned_today, ZERO)
        if points > allowance:
            points, capped_by = allowance, "daily_cap"
    if points > 0:
        charged = charge(points)
        if charged < points:
            points, capped_by = charged, "budget"
    breakdown.update(
        {
            "uncapped_points": str(uncapped),
            "capped_by": capped_by,
            "capped_points": str(uncapped - points),
        }
    )

    before = balance.points_balance
    balance.points_balance += points
    balance.lifetime_earned += points
    balance.earned_today = earned_today + points
    balance.earned_day = today
    balance.last_activity_at = now
    fields = list(EARNING_FIELDS)
    if event.type == "purchase":
        balance.lifetime_spend += event.amount
        balance.purchase_count += 1
        balance.last_purchase_at = now
        fields += PURCHASE_FIELDS
    if before < 0 <= balance.points_balance:
        fraud_flag_remove(balance, REFUND_DEBT_FLAG)  # the refund debt is repaid
        fields.append("fraud_flags")
    return Earning(
        points=points,
        before=before,
        fields=fields,
        # The point value the budget was charged at, which a refund gives back
        # (`budget.award_point_value`): the program's may change before then. Not in
        # `breakdown`, which is the answer's: this is the ledger's record alone.
        details={"breakdown": breakdown, "sira": sira, "point_value": _plain(program.point_value)},
    )


def _purchase_points(program, balance, event, now, today) -> tuple[Decimal, dict, dict]:
    """A purchase's points before the caps: base, tier and SIRA, and their breakdown."""
    multiplier = _tier_multiplier(balance)
    facts = MemberFacts(
        churn_risk=balance.churn_risk,
        engagement_score=balance.engagement_score,
        lifetime_spend=balance.lifetime_spend,
        on_entry_tier=balance.tier_rank == 0,
        last_purchase_at=balance.last_purchase_at,
        first_purchase_today=balance.last_purchase_at is None
        or program_local_date(program, balance.last_purchase_at) != today,
    )
    score = sira_score_purchase(
        member=facts,
        amount=event.amount,
        module=event.module,
        now=now,
        settings=sira_settings_resolve(program.sira_settings),
    )
    base = points_floor(event.amount * program.earn_rate)
    # The tier's part is what the multiplied amount adds to (or, below 1, takes from) the
    # base, both rounded down as a whole: never more than the exact product, never
    # below zero, whatever the multiplier.
    tier_bonus = points_floor(event.amount * program.earn_rate * multiplier) - base
    sira_rate = points_floor(event.amount * program.earn_rate * multiplier * (score.multiplier - 1))
    sira_bonus = points_floor(score.bonus_points)
    breakdown = {
        "base_points": str(base),
        "earn_rate": str(program.earn_rate.normalize()),
        "tier": balance.tier,
        "tier_multiplier": str(multiplier.normalize()),
        "tier_bonus_points": str(tier_bonus),
        "sira_multiplier_points": str(sira_rate),
        "sira_bonus_points": str(sira_bonus),
    }
    uncapped = base + tier_bonus + sira_rate + sira_bonus
    sira = score.as_dict()
    return uncapped, breakdown, sira


def _plain(value: Decimal) -> str:
    """`value` without exponent nor trailing zeros ("5", "0.35"), however it was read."""
    return f"{value.normalize():f}"


def _refuse_blocked(program: Program, balance: MemberBalance) -> None:
    if balance.is_frozen:
        raise AccountFrozen(member_id=balance.member_id)
    if program.fraud_detection_enabled and has_blocking_flag(balance):
        raise FraudReview(member_id=balance.member_id)


def _tier_multiplier(balance: MemberBalance) -> Decimal:
    """The earn multiplier of the member's tier, which every balance lock reads with the row
    (`balance_lock`, the event's and the batch's); 1 for a tier the program no longer has."""
    multiplier = balance.tier_multiplier
    return multiplier if multiplier is not None else Decimal(1)


def _earn(program: Program, balance: MemberBalance, event: EventInput, actor: Actor) -> LedgerEntry:
    """purchase, referral, campaign_bonus: rate (or given points), SIRA, daily cap, budget."""
    earning = earn_apply(
        program=program,
        balance=balance,
        event=event,
        now=timezone.now(),
        charge=lambda points: budget_charge(program=program, points=points),
    )
    entry = _entry_write(
        program, balance, event, actor, points=earning.points, details=earning.details
    )
    lots_settle(balance=balance, before=earning.before, after=balance.points_balance, entry=entry)
    balance.save(update_fields=[*earning.fields, "updated_at"])
    if earning.points > 0:
        outbox_publish(
            program=program,
            event_type="loyalty.points.earned",
            payload=_event_payload(entry, balance),
        )
    return entry
