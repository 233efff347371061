"""Refunds: the proportional clawback of a purchase's points, and the budget credit."""

from decimal import Decimal, localcontext

from django.utils import timezone

from ...actors import Actor
from ...errors import OriginalNotFound, RefundExceedsOriginal
from ...models import LedgerEntry, MemberBalance, PointLot, Program
from ...money import EXACT, ZERO, points_cost, points_floor
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
    # Points of the purchase that expired are gone already: they are not taken again (a debt
    # is only for points the member spent). What expired counts against the refunded share
    # first, and each refund takes the cumulative share not yet due, so partial refunds before
    # and after an expiry never take a point twice; a shortfall stays forgiven, as before.
    expired = _expired_of(original)
    due_before = sum((_due_of(r) for r in earlier), ZERO)
    with localcontext(EXACT):  # the share of 20-digit points by 18-digit amounts, exact
        share = points_floor(original.points * refunded_after / original.amount)
    due = max(share - expired - due_before, ZERO)
    before = balance.points_balance
    fields = ["points_balance", "lifetime_earned", "lifetime_spend", "last_activity_at"]
    if program.refund_policy == Program.RefundPolicy.CAP_AT_AVAILABLE:
        applied = min(due, max(balance.available, ZERO))
    else:
        applied = due
    shortfall = due - applied
    balance.points_balance -= applied
    # Never below zero, as a debit's correction (adjustments): what was earned may have been
    # corrected away already.
    balance.lifetime_earned = max(balance.lifetime_earned - applied, ZERO)
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
            "expired": str(expired),
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


def _expired_of(original: LedgerEntry) -> Decimal:
    """What expiry took from the purchase's own lot: each expiry entry names the lots it
    consumed. Read through the member's entries since the purchase (indexed), then the named
    lots by id: a spent lot is in no lot index, so it is not looked up by its entry."""
    taken: dict[int, Decimal] = {}
    for details in LedgerEntry.objects.filter(
        balance_id=original.balance_id, pk__gt=original.pk, type=LedgerEntry.Type.EXPIRY
    ).values_list("details", flat=True):
        for lot in details.get("lots", []):
            taken[lot["lot_id"]] = taken.get(lot["lot_id"], ZERO) + Decimal(lot["points"])
    if not taken:
        return ZERO
    own = PointLot.objects.filter(pk__in=list(taken), entry_id=original.pk)
    return sum((taken[pk] for pk in own.values_list("pk", flat=True)), ZERO)


def _due_of(refund: LedgerEntry) -> Decimal:
    """The clawback an earlier refund was due (its points, unless capped at available)."""
    due = (refund.details or {}).get("breakdown", {}).get("clawback_due")
    return Decimal(due) if due is not None else -refund.points


def _award_cost(program: Program, points: Decimal, point_value: Decimal) -> Decimal:
    return points_cost(max(points, ZERO), point_value=point_value, currency=program.currency)
