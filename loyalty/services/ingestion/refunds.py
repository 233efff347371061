"""Refunds: the proportional clawback of a purchase's points, and the budget credit."""

from decimal import Decimal

from django.utils import timezone

from ...actors import Actor
from ...errors import OriginalNotFound, RefundExceedsOriginal
from ...models import LedgerEntry, MemberBalance, Program
from ...money import ZERO, points_cost, points_floor
from ..balances import REFUND_DEBT_FLAG, fraud_flag_add, lots_settle
from ..budget import award_point_value, budget_credit
from ..outbox import outbox_publish
from .entries import _entry_write, _event_payload
from .inputs import EventInput


def _refund(
    program: Program, balance: MemberBalance, event: EventInput, actor: Actor
) -> LedgerEntry:
    """Claws back the purchase's points in proportion to the refunded amount, cumulatively, so
    partial refunds never take more than was awarded and a full refund takes exactly that."""
    original = (
        LedgerEntry.objects.filter(
            program=program,
            balance=balance,
            type=LedgerEntry.Type.PURCHASE,
            reference=event.original_reference,
        )
        .order_by("id")
        .first()
    )
    if original is None:
        raise OriginalNotFound(original_reference=event.original_reference)
    earlier = list(original.refunds.filter(type=LedgerEntry.Type.REFUND))
    refunded_before = sum((r.amount for r in earlier), ZERO)
    clawed_before = -sum((r.points for r in earlier), ZERO)
    refunded_after = refunded_before + event.amount
    if refunded_after > original.amount:
        raise RefundExceedsOriginal(
            original_amount=str(original.amount), refunded_before=str(refunded_before)
        )
    due = points_floor(original.points * refunded_after / original.amount) - points_floor(
        original.points * refunded_before / original.amount
    )
    before = balance.points_balance
    fields = ["points_balance", "lifetime_earned", "lifetime_spend", "last_activity_at"]
    if program.refund_policy == Program.RefundPolicy.CAP_AT_AVAILABLE:
        applied = min(due, max(balance.available, ZERO))
    else:
        applied = due
    shortfall = due - applied
    balance.points_balance -= applied
    balance.lifetime_earned -= applied
    balance.lifetime_spend = max(balance.lifetime_spend - event.amount, ZERO)
    balance.last_activity_at = timezone.now()
    debt = max(-balance.points_balance, ZERO)
    if debt > 0:
        fraud_flag_add(balance, REFUND_DEBT_FLAG, reference=event.reference or "")
        fields.append("fraud_flags")
    details = {
        "breakdown": {
            "original_transaction_id": str(original.pk),
            "original_points": str(original.points),
            "refunded_amount_total": str(refunded_after),
            "clawback_due": str(due),
            "clawed_back": str(applied),
            "shortfall": str(shortfall),
            "debt": str(debt),
        },
    }
    entry = _entry_write(
        program, balance, event, actor, points=-applied, details=details, original=original
    )
    lots_settle(
        balance=balance,
        before=before,
        after=balance.points_balance,
        entry=entry,
        first_entry_id=original.pk,
    )
    # The budget gets back the cost of what the award still holds before this refund minus
    # after it, at the point value the award was charged at: the credits of several partial
    # refunds add up to exactly what was charged, whatever the point value is today.
    point_value = award_point_value(program=program, entry=original)
    held = original.points - clawed_before
    budget_credit(
        program=program,
        cost=_award_cost(program, held, point_value)
        - _award_cost(program, held - applied, point_value),
    )
    balance.save(update_fields=[*fields, "updated_at"])
    outbox_publish(
        program=program,
        event_type="loyalty.points.clawed_back",
        payload={**_event_payload(entry, balance), "debt": str(debt), "shortfall": str(shortfall)},
    )
    return entry


def _award_cost(program: Program, points: Decimal, point_value: Decimal) -> Decimal:
    return points_cost(max(points, ZERO), point_value=point_value, currency=program.currency)
