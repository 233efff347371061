"""manual_adjust: an exact correction by staff, credit or debit."""

from django.utils import timezone

from ...actors import Actor
from ...errors import InsufficientPoints, LedgerLimitExceeded
from ...models import LedgerEntry, MemberBalance, Program
from ...money import ZERO
from ..balances import REFUND_DEBT_FLAG, fraud_flag_remove, lots_settle, totals_fit
from ..budget import budget_charge
from ..outbox import outbox_publish
from .entries import _entry_write, _event_payload
from .inputs import EventInput


def _adjust(
    program: Program, balance: MemberBalance, event: EventInput, actor: Actor
) -> LedgerEntry:
    """An exact correction by staff: never capped; a credit is charged to the budget in full,
    a debit may not leave less than the points held by pending redemptions.

    A debit gives nothing back to the budget: like a redemption or an expiry, it takes points
    out of the balance (oldest lots first) without naming the award they came from, so what
    was charged for them is not known (a credit at today's point value gives back more than
    was charged after it was raised); and a later refund of the purchase they came from gives
    its whole cost back anyway. Only a refund, which names its award, gives budget back."""
    points = event.points
    if not totals_fit(balance, points, point_value=program.point_value):
        raise LedgerLimitExceeded(member_id=balance.member_id)
    if points > 0:
        budget_charge(program=program, points=points, allow_partial=False)
    elif balance.points_balance + points < balance.locked:
        raise InsufficientPoints(available=str(balance.available), requested=str(-points))
    before = balance.points_balance
    balance.points_balance += points
    fields = ["points_balance", "lifetime_earned", "last_activity_at"]
    # A debit corrects what was earned, as a refund's clawback does: lifetime_earned, the
    # tier job's measure under upgrade-only, is earning net of staff corrections, as the
    # window policies count it (tiers.QUALIFYING_TYPES). Never below zero.
    balance.lifetime_earned = max(balance.lifetime_earned + points, ZERO)
    balance.last_activity_at = timezone.now()
    if before < 0 <= balance.points_balance:
        fraud_flag_remove(balance, REFUND_DEBT_FLAG)  # the refund debt is repaid
        fields.append("fraud_flags")
    entry = _entry_write(
        program,
        balance,
        event,
        actor,
        points=points,
        details={"breakdown": {"base_points": str(points), "capped_by": None}},
    )
    lots_settle(balance=balance, before=before, after=balance.points_balance, entry=entry)
    balance.save(update_fields=[*fields, "updated_at"])
    outbox_publish(
        program=program,
        event_type="loyalty.balance.adjusted",
        payload={**_event_payload(entry, balance), "reason": event.reason},
    )
    return entry
