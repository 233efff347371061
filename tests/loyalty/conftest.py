"""Helpers for the loyalty tests: a compact way to ingest events and a snapshot of every table
a write touches, so refusal tests can assert that nothing changed."""

from decimal import Decimal

import pytest
from django.db.models import Sum

from audit.models import AuditEntry
from loyalty.models import (
    BudgetShard,
    LedgerEntry,
    MemberBalance,
    OutboxEvent,
    PointLot,
    Redemption,
    Voucher,
)
from loyalty.services import event_ingest
from tests.factories import PointsEventFactory, PurchaseFactory, RefundFactory


def db_state() -> dict:
    """Row counts of everything a write may add, plus the sums a write may move."""
    balances = MemberBalance.objects.aggregate(
        points=Sum("points_balance"), locked=Sum("locked"), earned=Sum("lifetime_earned")
    )
    return {
        "entries": LedgerEntry.objects.count(),
        "lots": PointLot.objects.count(),
        "lots_remaining": PointLot.objects.aggregate(s=Sum("remaining"))["s"],
        "audit": AuditEntry.objects.count(),
        "outbox": OutboxEvent.objects.count(),
        "redemptions": Redemption.objects.count(),
        "vouchers": Voucher.objects.count(),
        "balances": MemberBalance.objects.count(),
        "budget_spent": BudgetShard.objects.aggregate(s=Sum("spent"))["s"],
        **balances,
    }


@pytest.fixture
def purchase(actor):
    def do(program, member_id="u_1", amount="10000", **fields):
        fields.setdefault("currency", program.currency)
        event = PurchaseFactory(member_id=member_id, amount=Decimal(amount), **fields)
        return event_ingest(program=program, event=event, actor=actor)

    return do


@pytest.fixture
def refund(actor):
    def do(program, original_reference, member_id="u_1", amount="10000", **fields):
        fields.setdefault("currency", program.currency)
        event = RefundFactory(
            member_id=member_id,
            amount=Decimal(amount),
            original_reference=original_reference,
            **fields,
        )
        return event_ingest(program=program, event=event, actor=actor)

    return do


@pytest.fixture
def award(actor):
    """referral / campaign_bonus / manual_adjust: events that carry points."""

    def do(program, points, member_id="u_1", type="referral", **fields):
        event = PointsEventFactory(member_id=member_id, points=Decimal(points), type=type, **fields)
        return event_ingest(program=program, event=event, actor=actor)

    return do


def balance_of(program, member_id="u_1") -> MemberBalance:
    return MemberBalance.objects.get(program=program, member_id=member_id)
