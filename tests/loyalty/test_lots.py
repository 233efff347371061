"""Point lots: every award is a lot with an expiry date; redemptions and refunds consume them
oldest first (a refund starts with the lot of the purchase it refunds)."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine

from loyalty.actors import system_actor
from loyalty.models import Job, PointLot, Program
from loyalty.services.balances import lot_expiry
from loyalty.services.jobs import job_create, job_run
from loyalty.verify import ledger_verify
from tests.conftest import hold

from .conftest import balance_of

pytestmark = pytest.mark.django_db

D = Decimal


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def remaining(program) -> list[Decimal]:
    lots = PointLot.objects.filter(balance=balance_of(program)).order_by("id")
    return [lot.remaining for lot in lots]


@pytest.fixture
def three_lots(program, purchase):
    """Three purchases of 100 points on three days: order-1 is the oldest lot."""
    for day, ref in ((1, "order-1"), (2, "order-2"), (3, "order-3")):
        with time_machine.travel(at(2026, 3, day, 12), tick=False):
            purchase(program, amount="5000", reference=ref)
    return program


def test_redemption_consumes_the_oldest_lots_first(three_lots, actor):
    hold(three_lots, "150", actor, key="r1", capture=True)

    assert remaining(three_lots) == [D("0"), D("50"), D("100")]
    assert ledger_verify() == []


def test_refund_consumes_the_refunded_purchase_lot_first(three_lots, refund):
    refund(three_lots, "order-3", amount="2500")  # 50 points

    assert remaining(three_lots) == [D("100"), D("100"), D("50")]


def test_refund_beyond_its_own_lot_continues_with_the_oldest(three_lots, refund, actor):
    hold(three_lots, "150", actor, key="r1", capture=True)  # [0, 50, 100]

    refund(three_lots, "order-2", amount="5000")  # 100 points: 50 from its lot, 50 oldest next

    assert remaining(three_lots) == [D("0"), D("0"), D("50")]
    assert balance_of(three_lots).points_balance == D("50.00")
    assert ledger_verify() == []


def test_each_award_is_a_lot_expiring_after_the_program_expiry_days(program, purchase):
    with time_machine.travel(at(2026, 3, 1, 12), tick=False):
        result = purchase(program, amount="5000")

    lot = PointLot.objects.get(entry=result.entry)
    assert lot.points == D("100.00")
    assert lot.earned_at == at(2026, 3, 1, 12)
    assert lot.expires_at == at(2027, 3, 1, 12)


def test_no_expiry_when_the_program_has_no_expiry_days(make_program, purchase):
    program = make_program(expiry_days=None)
    result = purchase(program, amount="5000")
    assert PointLot.objects.get(entry=result.entry).expires_at is None


@pytest.mark.parametrize(
    ("rounding", "expected_local"),
    [
        # Earned 2026-01-15 in Tokyo + 30 days = 2026-02-14; rounded up to the end of that
        # month / quarter / year, i.e. midnight starting the next day, Tokyo time.
        (Program.ExpiryRounding.NONE, (2026, 2, 14, 10)),
        (Program.ExpiryRounding.END_OF_MONTH, (2026, 3, 1, 0)),
        (Program.ExpiryRounding.END_OF_QUARTER, (2026, 4, 1, 0)),
        (Program.ExpiryRounding.END_OF_YEAR, (2027, 1, 1, 0)),
    ],
)
def test_expiry_rounding_is_in_the_program_time_zone(make_program, rounding, expected_local):
    import zoneinfo

    program = make_program(timezone="Asia/Tokyo", expiry_days=30, expiry_rounding=rounding)
    earned = at(2026, 1, 15, 1)  # 10:00 in Tokyo

    expires = lot_expiry(program, earned)

    assert expires == datetime(*expected_local, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"))


def test_debt_repayment_makes_no_lot_for_the_repaid_part(program, purchase, refund, actor):
    purchase(program, amount="5000", reference="order-1")  # 100
    hold(program, "100", actor, key="r1", capture=True)
    refund(program, "order-1", amount="5000")  # -100: debt

    result = purchase(program, amount="7500")  # 150: repays 100, lots 50

    assert PointLot.objects.get(entry=result.entry).points == D("50.00")
    assert sum(remaining(program)) == D("50")
    assert ledger_verify() == []


def test_refund_after_its_lot_expired_consumes_no_other_lot(three_lots, refund):
    with time_machine.travel(at(2027, 3, 1, 13), tick=False):  # order-1's lot is due
        job = job_create(kind=Job.Kind.POINT_EXPIRY, program=three_lots, actor=system_actor("t"))
        job_run(job_id=job.pk)
        assert remaining(three_lots) == [D("0"), D("100"), D("100")]

        result = refund(three_lots, "order-1", amount="2500")  # half of it: 50 points, expired
        assert result.entry.points == D("0.00")
        assert remaining(three_lots) == [D("0"), D("100"), D("100")]

        refund(three_lots, "order-2", amount="2500")  # a lot that did not expire: 50 taken

    assert remaining(three_lots) == [D("0"), D("50"), D("100")]
    assert balance_of(three_lots).points_balance == D("150.00")
    assert ledger_verify() == []
