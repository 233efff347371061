"""Refunds claw back in proportion, never more than was awarded; a debt is never dropped."""

from datetime import datetime
from decimal import Decimal

import pytest
import time_machine

from loyalty.actors import Actor, system_actor
from loyalty.errors import OutstandingDebt, RefundExceedsOriginal
from loyalty.models import Job, LedgerEntry, OutboxEvent, PointLot, Program
from loyalty.services import event_ingest
from loyalty.services.balances import REFUND_DEBT_FLAG
from loyalty.services.jobs import job_create, job_run
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.factories import PointsEventFactory

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal


def flags(program, member_id="u_1") -> list[str]:
    return [f["code"] for f in balance_of(program, member_id).fraud_flags]


def redeem(program, points, key, actor, member_id="u_1"):
    return hold(program, points, actor, key=key, member_id=member_id, capture=True)


def test_partial_refund_claws_back_in_proportion(program, purchase, refund):
    purchase(program, amount="10000", reference="order-1")  # 200 points

    result = refund(program, "order-1", amount="2500")

    assert result.entry.points == D("-50.00")
    assert result.entry.original_entry.reference == "order-1"
    breakdown = result.as_dict()["breakdown"]
    assert breakdown["clawback_due"] == "50.00"
    assert breakdown["clawed_back"] == "50.00"
    assert breakdown["debt"] == "0.00"
    balance = balance_of(program)
    assert balance.points_balance == D("150.00")
    assert balance.lifetime_earned == D("150.00")
    assert balance.lifetime_spend == D("7500")
    assert OutboxEvent.objects.filter(event_type="loyalty.points.clawed_back").count() == 1
    assert ledger_verify() == []


def test_several_partial_refunds_never_exceed_the_award_and_full_is_exact(
    make_program, purchase, refund
):
    program = make_program(earn_rate=D("0.0333"))
    purchase(program, amount="10001", reference="order-1")  # 333.0333 -> 333.03 points
    clawed = []
    for amount in ("3333", "3333", "3334", "1"):
        result = refund(program, "order-1", amount=amount)
        clawed.append(-result.entry.points)
        assert sum(clawed) <= D("333.03")

    # Each share is the rounded-down cumulative share minus what was already taken, so no
    # rounding is lost or taken twice and the last refund takes exactly the remainder
    # (0.04, not its own proportional 0.03).
    assert clawed == [D("110.98"), D("110.99"), D("111.02"), D("0.04")]
    assert sum(clawed) == D("333.03")
    assert balance_of(program).points_balance == D("0.00")
    before = db_state()

    with pytest.raises(RefundExceedsOriginal) as exc:
        refund(program, "order-1", amount="1")

    assert exc.value.code == "refund_exceeds_original"
    assert db_state() == before
    assert ledger_verify() == []


def test_refund_larger_than_the_purchase_is_refused(program, purchase, refund):
    purchase(program, amount="10000", reference="order-1")
    before = db_state()
    with pytest.raises(RefundExceedsOriginal):
        refund(program, "order-1", amount="10001")
    assert db_state() == before


def test_refund_after_redemption_leaves_a_debt_that_blocks_redemptions_until_repaid(
    program, purchase, refund, actor
):
    purchase(program, amount="10000", reference="order-1")  # 200
    redeem(program, "150", "r1", actor)  # 50 left

    result = refund(program, "order-1", amount="10000")

    # The whole award is clawed back: "earn, redeem, refund" leaves the member owing 150.
    assert result.entry.points == D("-200.00")
    assert result.as_dict()["breakdown"]["debt"] == "150.00"
    assert result.as_dict()["breakdown"]["shortfall"] == "0.00"
    balance = balance_of(program)
    assert balance.points_balance == D("-150.00")
    assert REFUND_DEBT_FLAG in flags(program)
    assert PointLot.objects.filter(balance=balance, remaining__gt=0).count() == 0
    assert ledger_verify() == []
    before = db_state()

    with pytest.raises(OutstandingDebt) as exc:
        redeem(program, "1", "r2", actor)
    assert exc.value.code == "outstanding_debt"
    assert db_state() == before

    # Earning repays the debt first; only what is left forms a lot.
    repay = purchase(program, amount="10000")  # 200
    assert repay.entry.points == D("200.00")
    balance = balance_of(program)
    assert balance.points_balance == D("50.00")
    assert REFUND_DEBT_FLAG not in flags(program)
    assert PointLot.objects.get(entry=repay.entry).points == D("50.00")
    assert redeem(program, "50", "r3", actor).status == "completed"
    assert balance_of(program).points_balance == D("0.00")
    assert ledger_verify() == []


def test_partial_repayment_keeps_the_debt_and_the_block(program, purchase, refund, actor):
    purchase(program, amount="10000", reference="order-1")
    redeem(program, "200", "r1", actor)
    refund(program, "order-1", amount="10000")  # -200
    purchase(program, amount="5000")  # +100 -> -100

    assert balance_of(program).points_balance == D("-100.00")
    assert REFUND_DEBT_FLAG in flags(program)
    with pytest.raises(OutstandingDebt):
        redeem(program, "1", "r2", actor)


def test_manual_credit_that_repays_the_debt_lifts_the_flag(program, purchase, refund, actor):
    purchase(program, amount="10000", reference="order-1")
    redeem(program, "200", "r1", actor)
    refund(program, "order-1", amount="10000")  # -200

    event_ingest(
        program=program,
        event=PointsEventFactory(
            member_id="u_1", type="manual_adjust", points=D("200"), reason="settled"
        ),
        actor=Actor(id="fin-1", role="finance_ops"),
    )

    assert balance_of(program).points_balance == D("0.00")
    assert REFUND_DEBT_FLAG not in flags(program)
    assert ledger_verify() == []


def test_cap_at_available_policy_records_the_shortfall_instead_of_a_debt(
    make_program, purchase, refund, actor
):
    program = make_program(refund_policy=Program.RefundPolicy.CAP_AT_AVAILABLE)
    purchase(program, amount="10000", reference="order-1")  # 200
    redeem(program, "150", "r1", actor)

    result = refund(program, "order-1", amount="10000")

    assert result.entry.points == D("-50.00")
    breakdown = result.as_dict()["breakdown"]
    assert breakdown["clawback_due"] == "200.00"
    assert breakdown["clawed_back"] == "50.00"
    assert breakdown["shortfall"] == "150.00"
    assert breakdown["debt"] == "0.00"
    assert balance_of(program).points_balance == D("0.00")
    assert REFUND_DEBT_FLAG not in flags(program)
    event = OutboxEvent.objects.get(event_type="loyalty.points.clawed_back")
    assert event.payload["shortfall"] == "150.00"
    assert ledger_verify() == []


def test_cap_at_available_never_takes_points_held_by_a_pending_redemption(
    make_program, purchase, refund, actor
):
    program = make_program(refund_policy=Program.RefundPolicy.CAP_AT_AVAILABLE)
    purchase(program, amount="10000", reference="order-1")  # 200
    hold(program, "150", actor)

    result = refund(program, "order-1", amount="10000")

    assert result.entry.points == D("-50.00")
    balance = balance_of(program)
    assert (balance.points_balance, balance.locked) == (D("150.00"), D("150.00"))
    assert ledger_verify() == []


def test_refund_gives_the_budget_back(make_program, purchase, refund):
    program = make_program(budget_limit=D("1000"))
    purchase(program, amount="10000", reference="order-1")  # 200 XOF of budget

    refund(program, "order-1", amount="5000")

    assert db_state()["budget_spent"] == D("100")


def test_partial_refunds_never_give_back_more_budget_than_the_award_cost(
    make_program, purchase, refund
):
    # 250.50 points cost 251 XOF (rounded up). Two half refunds claw back 125.23 + 125.27:
    # rounding each credit up would give back 252 XOF, 1 more than was ever charged.
    program = make_program(budget_limit=D("100000"))
    purchase(program, amount="12525", reference="order-1")
    purchase(program, member_id="u_2", amount="10000")  # 200 XOF, stays awarded
    assert db_state()["budget_spent"] == D("451")

    refund(program, "order-1", amount="6262")
    refund(program, "order-1", amount="6263")

    assert db_state()["budget_spent"] == D("200")
    assert ledger_verify() == []


def test_refund_of_one_purchase_leaves_other_purchases_alone(program, purchase, refund):
    purchase(program, amount="10000", reference="order-1")
    purchase(program, amount="5000", reference="order-2")

    refund(program, "order-2", amount="5000")

    assert balance_of(program).points_balance == D("200.00")
    refunds = LedgerEntry.objects.filter(type="refund")
    assert [r.original_entry.reference for r in refunds] == ["order-2"]


def expire_due(program) -> Job:
    job = job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=system_actor("test"))
    return job_run(job_id=job.pk)


def at(iso: str):
    return time_machine.travel(datetime.fromisoformat(iso), tick=False)


def test_refund_of_expired_points_does_not_take_them_again(make_program, purchase, refund, actor):
    program = make_program(budget_limit=D("100000"))
    with at("2025-01-01T10:00:00+00:00"):
        purchase(program, amount="10000", reference="order-1")  # 200
    with at("2025-06-01T10:00:00+00:00"):
        purchase(program, amount="2500", reference="order-2")  # 50, still valid in 2026
    with at("2026-01-02T03:00:00+00:00"):
        assert expire_due(program).status == Job.Status.SUCCEEDED  # order-1's 200 expire
        assert db_state()["budget_spent"] == D("250")

        result = refund(program, "order-1", amount="10000")

    # The member never used those points: the refund is recorded and takes nothing.
    assert (result.entry.points, result.entry.amount) == (D("0.00"), D("10000"))
    breakdown = result.as_dict()["breakdown"]
    assert breakdown["clawback_due"] == "0.00"
    assert breakdown["expired"] == "200.00"
    assert breakdown["clawed_back"] == "0.00"
    assert breakdown["debt"] == "0.00"
    balance = balance_of(program)
    assert (balance.points_balance, balance.lifetime_spend) == (D("50.00"), D("2500"))
    assert REFUND_DEBT_FLAG not in flags(program)
    entries = LedgerEntry.objects.filter(balance=balance).order_by("id")
    assert list(entries.values_list("type", "points")) == [
        ("purchase", D("200.00")),
        ("purchase", D("50.00")),
        ("expiry", D("-200.00")),
        ("refund", D("0.00")),
    ]
    lots = PointLot.objects.filter(balance=balance).order_by("id")
    assert list(lots.values_list("remaining", flat=True)) == [D("0.00"), D("50.00")]
    assert db_state()["budget_spent"] == D("250")  # expired points were never given back
    assert hold(program, "50", actor).status == "pending"
    assert ledger_verify() == []


def test_partial_refunds_around_an_expiry_never_take_a_point_twice(make_program, purchase, refund):
    program = make_program(budget_limit=D("100000"))
    with at("2025-01-01T10:00:00+00:00"):
        purchase(program, amount="10000", reference="order-1")  # 200
    with at("2025-06-01T10:00:00+00:00"):
        purchase(program, amount="2500", reference="order-2")  # 50
        first = refund(program, "order-1", amount="5000")  # 100 from order-1's own lot
    with at("2026-01-02T03:00:00+00:00"):
        expire_due(program)  # the other 100 of order-1 expire
        rest = refund(program, "order-1", amount="5000")

    assert first.entry.points == D("-100.00")
    assert rest.entry.points == D("0.00")
    assert rest.as_dict()["breakdown"]["expired"] == "100.00"
    assert LedgerEntry.objects.get(type=LedgerEntry.Type.EXPIRY).points == D("-100.00")
    assert balance_of(program).points_balance == D("50.00")
    assert REFUND_DEBT_FLAG not in flags(program)
    assert db_state()["budget_spent"] == D("150")  # 100 clawed back, 100 expired, 50 held
    assert ledger_verify() == []


def test_refunds_of_a_spent_then_expired_purchase_owe_the_spent_part_only(
    make_program, purchase, refund, actor
):
    program = make_program(budget_limit=D("100000"))
    with at("2025-01-01T10:00:00+00:00"):
        purchase(program, amount="10000", reference="order-1")  # 200
        redeem(program, "150", "r1", actor)  # 50 of order-1's lot left
    with at("2025-06-01T10:00:00+00:00"):
        purchase(program, amount="2500", reference="order-2")  # 50
    with at("2026-01-02T03:00:00+00:00"):
        expire_due(program)  # order-1's last 50 expire
        assert balance_of(program).points_balance == D("50.00")

        half = refund(program, "order-1", amount="5000")
        rest = refund(program, "order-1", amount="5000")

    # Of order-1's 200 points, 150 were spent and 50 expired: the refunds take back 150.
    assert (half.entry.points, rest.entry.points) == (D("-50.00"), D("-100.00"))
    assert rest.as_dict()["breakdown"]["debt"] == "100.00"
    balance = balance_of(program)
    assert balance.points_balance == D("-100.00")
    assert REFUND_DEBT_FLAG in flags(program)
    assert not PointLot.objects.filter(balance=balance, remaining__gt=0).exists()
    assert db_state()["budget_spent"] == D("100")  # 250 charged, 150 clawed back
    assert ledger_verify() == []


def test_cap_at_available_counts_expired_points_out_of_the_due_not_the_shortfall(
    make_program, purchase, refund
):
    program = make_program(refund_policy=Program.RefundPolicy.CAP_AT_AVAILABLE)
    with at("2025-01-01T10:00:00+00:00"):
        purchase(program, amount="10000", reference="order-1")  # 200
    with at("2025-06-01T10:00:00+00:00"):
        purchase(program, amount="2500", reference="order-2")  # 50
    with at("2026-01-02T03:00:00+00:00"):
        expire_due(program)

        result = refund(program, "order-1", amount="10000")

    breakdown = result.as_dict()["breakdown"]
    assert (breakdown["clawback_due"], breakdown["shortfall"]) == ("0.00", "0.00")
    assert balance_of(program).points_balance == D("50.00")
    assert ledger_verify() == []


@pytest.mark.postgres  # SQLite keeps an 18-digit amount as a float
def test_a_full_refund_of_a_very_large_purchase_takes_back_exactly_its_award(
    make_program, purchase, refund
):
    """The share of 20-digit points by 18-digit amounts, computed exactly (at 28 digits it
    rounded before the floor, and a full refund left a cent of a point and a franc of budget
    behind)."""
    program = make_program(budget_limit=None)
    amount = "373360405763120191"
    earned = purchase(program, amount=amount, reference="order-big")
    assert earned.entry.points == D("7467208115262403.82")

    result = refund(program, "order-big", amount=amount)

    assert result.entry.points == -earned.entry.points
    assert balance_of(program).points_balance == D("0.00")
    assert db_state()["budget_spent"] == D("0")


def test_a_refund_after_a_debit_leaves_lifetime_earned_at_zero_not_below(program, purchase, refund):
    """A debit corrects lifetime_earned down to zero at most; the refund's clawback of the
    same purchase does not take it below zero either."""
    purchase(program, amount="10000", reference="order-1")  # 200 points
    event_ingest(
        program=program,
        event=PointsEventFactory(
            member_id="u_1", type="manual_adjust", points=D("-200"), reason="correction"
        ),
        actor=Actor(id="fin-1", role="finance_ops"),
    )
    assert balance_of(program).lifetime_earned == D("0.00")

    refund(program, "order-1", amount="10000")

    balance = balance_of(program)
    assert (balance.points_balance, balance.lifetime_earned) == (D("-200.00"), D("0.00"))
    assert ledger_verify() == []
