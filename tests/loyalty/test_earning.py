"""Earning: rate, tier multiplier, SIRA bonus, the breakdown, and rounding."""

from decimal import Decimal

import pytest

from audit.models import AuditEntry
from loyalty.errors import ValidationFailed
from loyalty.models import LedgerEntry, OutboxEvent, PointLot
from loyalty.services import TierInput
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.factories import PointsEventFactory, PurchaseFactory

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal


def explained(result) -> Decimal:
    """The points the breakdown accounts for: every part, minus what the caps took."""
    b = result.as_dict()["breakdown"]
    parts = [
        "base_points",
        "tier_bonus_points",
        "sira_multiplier_points",
        "sira_bonus_points",
    ]
    return sum((D(b.get(p, "0")) for p in parts), D(0)) - D(b["capped_points"])


def test_purchase_earns_amount_times_rate_and_writes_entry_lot_audit_outbox(program, purchase):
    result = purchase(program, amount="12500", reference="order-991")

    entry = result.entry
    assert entry.points == D("250.00")
    assert entry.type == "purchase"
    assert entry.balance_after == D("250.00")
    assert entry.reference == "order-991"
    balance = balance_of(program)
    assert balance.points_balance == D("250.00")
    assert balance.lifetime_earned == D("250.00")
    assert balance.lifetime_spend == D("12500")
    assert balance.purchase_count == 1
    lot = PointLot.objects.get(entry=entry)
    assert (lot.points, lot.remaining) == (D("250.00"), D("250.00"))
    assert lot.expires_at is not None
    assert (lot.expires_at - lot.earned_at).days == 365
    audit = AuditEntry.objects.get(entity_type="transaction", entity_id=str(entry.pk))
    assert audit.action == "transaction.purchase"
    assert audit.actor_id == "ops-1"
    assert OutboxEvent.objects.filter(event_type="loyalty.points.earned").count() == 1
    body = result.as_dict()
    assert body["points"] == "250.00"
    assert body["balance"] == {
        "points_balance": "250.00",
        "locked": "0.00",
        "available": "250.00",
        "tier": "basic",
    }
    assert body["breakdown"]["base_points"] == "250.00"
    assert body["breakdown"]["capped_by"] is None
    assert explained(result) == entry.points
    assert ledger_verify() == []


def test_tier_multiplier_adds_tier_bonus_points(make_program, purchase):
    program = make_program(
        tiers=[
            TierInput(name="basic", earn_multiplier=D("1.25")),
            TierInput(name="gold", min_points=D("5000"), earn_multiplier=D("2")),
        ]
    )

    result = purchase(program, amount="12500")

    breakdown = result.as_dict()["breakdown"]
    assert breakdown["tier"] == "basic"
    assert breakdown["tier_multiplier"] == "1.25"
    assert breakdown["base_points"] == "250.00"
    assert breakdown["tier_bonus_points"] == "62.50"
    assert result.entry.points == D("312.50")
    assert explained(result) == result.entry.points


def test_a_tier_multiplier_below_one_never_rounds_the_award_up(make_program, purchase):
    # 1,999 XOF x 0.02 x 0.75 = 29.985 points exactly: 29.98, not 29.99 (the tier's part,
    # -9.995, rounds down to -10.00, not toward zero).
    program = make_program(tiers=[TierInput(name="basic", earn_multiplier=D("0.75"))])
    result = purchase(program, amount="1999")
    assert result.as_dict()["breakdown"]["tier_bonus_points"] == "-10.00"
    assert result.entry.points == D("29.98")
    assert explained(result) == result.entry.points


@pytest.mark.parametrize(
    ("amount", "rate", "multiplier", "points"),
    [
        ("0.25", "0.02", "0.75", "0.00"),  # 0.00375: nothing, not -0.01 (a refused row)
        ("1", "1.001", "0.5", "0.50"),  # 0.5005: the floor of the product, not 0.49
        ("10.99", "0.05", "0.75", "0.41"),  # 0.412125
        ("100.09", "0.1", "1.5", "15.01"),  # 15.0135: above 1 too, the product's floor
    ],
)
def test_the_tier_part_makes_the_award_the_floor_of_the_whole_product(
    make_program, purchase, amount, rate, multiplier, points
):
    program = make_program(
        currency="USD", earn_rate=D(rate), sira_settings={"enabled": False},
        tiers=[TierInput(name="basic", earn_multiplier=D(multiplier))],
    )  # fmt: skip
    result = purchase(program, amount=amount)
    assert result.entry.points == D(points)
    assert explained(result) == result.entry.points


def test_gold_member_earns_with_gold_multiplier(make_program, purchase):
    program = make_program(
        tiers=[
            TierInput(name="basic"),
            TierInput(name="gold", min_points=D("5000"), earn_multiplier=D("2")),
        ]
    )
    purchase(program, amount="100")
    balance = balance_of(program)
    balance.tier = "gold"
    balance.save(update_fields=["tier"])

    result = purchase(program, amount="1000")

    assert result.entry.points == D("40.00")
    assert result.as_dict()["breakdown"]["tier_bonus_points"] == "20.00"


def test_sira_rules_fire_at_ingestion_and_breakdown_explains_every_point(make_program, purchase):
    program = make_program(sira_settings={})  # the seed's defaults

    result = purchase(program, amount="12500", module="eats")

    body = result.as_dict()
    # high value (+1%) and Eats cross-module (+1.5%) raise the rate; the first purchase of the
    # day adds 10 points.
    assert body["sira"] == {
        "multiplier": "1.025",
        "bonus_points": "10.00",
        "reasons": ["high_value_transaction", "first_daily_purchase", "cross_module_promotion"],
        "confidence": "0.65",
    }
    assert body["breakdown"]["base_points"] == "250.00"
    assert body["breakdown"]["sira_multiplier_points"] == "6.25"
    assert body["breakdown"]["sira_bonus_points"] == "10.00"
    assert result.entry.points == D("266.25")
    assert explained(result) == result.entry.points

    second = purchase(program, amount="400", module="eats")
    # Same day: no first-purchase bonus. Within 7 days: frequent (+0.5%); Eats (+1.5%); the
    # lifetime spend (12,500) is now past 10,000 (+1%); still basic past 300 spent: +15 points.
    assert second.as_dict()["sira"]["reasons"] == [
        "frequent_purchaser",
        "cross_module_promotion",
        "high_lifetime_value",
        "tier_stagnation_incentive",
    ]
    assert second.as_dict()["sira"]["confidence"] == "0.70"
    # 8 base + floor(8 x 0.03) = 0.24 + 15.
    assert second.entry.points == D("23.24")
    assert explained(second) == second.entry.points
    assert ledger_verify() == []


def test_sira_program_overrides_change_what_fires(make_program, purchase):
    program = make_program(
        sira_settings={
            "high_value_amount": "20000",
            "first_daily_purchase_points": "0",
            "promoted_modules": ["shop"],
            "cross_module_bonus": "0.1",
        }
    )

    result = purchase(program, amount="12500", module="shop")

    assert result.as_dict()["sira"]["reasons"] == ["cross_module_promotion"]
    assert result.as_dict()["breakdown"]["sira_multiplier_points"] == "25.00"
    assert result.entry.points == D("275.00")


def test_sira_disabled_awards_base_rate_only(program, purchase):
    result = purchase(program, amount="12500", module="eats")
    assert result.as_dict()["sira"]["reasons"] == []
    assert result.entry.points == D("250.00")


@pytest.mark.parametrize(
    "bad",
    [{"no_such_rule": 1}, {"high_value_bonus": "-0.01"}, {"high_value_amount": "lots"}],
)
def test_program_with_invalid_sira_settings_is_refused(make_program, bad):
    with pytest.raises(ValidationFailed) as exc:
        make_program(sira_settings=bad)
    assert "sira_settings" in exc.value.errors


def test_xof_points_have_two_places_and_round_down(program, purchase):
    # 12,525 XOF x 0.02 = 250.50 exactly; 12,526 x 0.02 = 250.52.
    assert purchase(program, amount="12525").entry.points == D("250.50")
    # 3 x 0.333333 = 0.999999 points: rounds down to 0.99, never up to 1.00.
    third = purchase(program, member_id="u_2", amount="3")
    assert third.entry.points == D("0.06")


def test_usd_amounts_take_cents_and_points_round_down(make_program, purchase):
    program = make_program(currency="USD", earn_rate=D("0.015"), timezone="America/New_York")

    result = purchase(program, amount="33.33")

    # 33.33 x 0.015 = 0.49995 -> 0.49 (round down, not half-up 0.50).
    assert result.entry.points == D("0.49")
    assert balance_of(program).lifetime_spend == D("33.33")


@pytest.mark.parametrize(
    ("currency", "amount"),
    [("XOF", "100.5"), ("XOF", "0.01"), ("USD", "10.005"), ("USD", "0")],
)
def test_amount_with_more_places_than_the_currency_or_not_positive_is_refused(
    make_program, actor, currency, amount
):
    from loyalty.services import event_ingest

    program = make_program(currency=currency)
    before = db_state()

    with pytest.raises(ValidationFailed) as exc:
        event_ingest(
            program=program,
            event=PurchaseFactory(amount=D(amount), currency=currency),
            actor=actor,
        )

    assert exc.value.code == "validation_error"
    assert "amount" in exc.value.errors
    assert db_state() == before


def test_points_event_with_three_places_is_refused(program, actor):
    from loyalty.services import event_ingest

    before = db_state()
    with pytest.raises(ValidationFailed) as exc:
        event_ingest(program=program, event=PointsEventFactory(points=D("1.005")), actor=actor)
    assert "points" in exc.value.errors
    assert db_state() == before


@pytest.mark.parametrize("type_", ["referral", "campaign_bonus"])
def test_points_events_award_given_points_with_a_lot(program, award, type_):
    result = award(program, "75.50", type=type_)

    assert result.entry.type == type_
    assert result.entry.points == D("75.50")
    assert balance_of(program).points_balance == D("75.50")
    assert PointLot.objects.get(entry=result.entry).remaining == D("75.50")
    assert explained(result) == D("75.50")


def test_manual_adjust_credits_and_debits_exactly(program, award, purchase):
    purchase(program, amount="10000")  # 200 points
    credit = award(program, "300", type="manual_adjust", reason="goodwill")
    debit = award(program, "-450", type="manual_adjust", reason="correction")

    assert credit.entry.points == D("300.00")
    assert debit.entry.points == D("-450.00")
    balance = balance_of(program)
    assert balance.points_balance == D("50.00")
    assert OutboxEvent.objects.filter(event_type="loyalty.balance.adjusted").count() == 2
    assert ledger_verify() == []


def test_manual_debit_below_held_points_is_refused(program, award, purchase, actor):
    from loyalty.errors import InsufficientPoints

    purchase(program, amount="10000")  # 200 points
    hold(program, "150", actor)
    before = db_state()

    with pytest.raises(InsufficientPoints):
        award(program, "-100", type="manual_adjust", reason="correction")

    assert db_state() == before
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 0
