"""The per-member daily earning cap, counted per day in the program's time zone."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine

from loyalty.verify import ledger_verify

from .conftest import balance_of

pytestmark = pytest.mark.django_db

D = Decimal


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_cap_trims_the_award_that_crosses_it_and_explains_it(make_program, purchase):
    program = make_program(max_earn_per_day=D("300"))

    first = purchase(program, amount="10000")  # 200
    second = purchase(program, amount="10000")  # 100 of 200
    third = purchase(program, amount="10000")  # nothing left today

    assert first.entry.points == D("200.00")
    assert second.entry.points == D("100.00")
    assert second.as_dict()["breakdown"]["capped_by"] == "daily_cap"
    assert second.as_dict()["breakdown"]["uncapped_points"] == "200.00"
    assert second.as_dict()["breakdown"]["capped_points"] == "100.00"
    assert third.entry.points == D("0.00")
    assert third.as_dict()["breakdown"]["capped_by"] == "daily_cap"
    balance = balance_of(program)
    assert balance.points_balance == D("300.00")
    # The purchase still counts as spend even when it earned nothing.
    assert balance.lifetime_spend == D("30000")
    assert ledger_verify() == []


def test_cap_resets_at_midnight_in_the_program_time_zone_not_utc(make_program, purchase):
    # Tokyo is UTC+9: its day starts at 15:00 UTC.
    program = make_program(timezone="Asia/Tokyo", max_earn_per_day=D("300"))

    with time_machine.travel(at(2026, 11, 27, 14, 0), tick=False):  # 23:00 in Tokyo
        assert purchase(program, amount="10000").entry.points == D("200.00")
    with time_machine.travel(at(2026, 11, 27, 14, 59, 59), tick=False):  # 23:59:59 Tokyo
        assert purchase(program, amount="10000").entry.points == D("100.00")
    with time_machine.travel(at(2026, 11, 27, 15, 0), tick=False):  # 00:00 the next day
        assert purchase(program, amount="10000").entry.points == D("200.00")
    # UTC midnight is 09:00 in Tokyo: the same local day, so nothing resets.
    with time_machine.travel(at(2026, 11, 28, 0, 0, 1), tick=False):
        fourth = purchase(program, amount="10000")
    assert fourth.entry.points == D("100.00")
    assert fourth.as_dict()["breakdown"]["capped_by"] == "daily_cap"
    balance = balance_of(program)
    assert balance.earned_day.isoformat() == "2026-11-28"
    assert balance.earned_today == D("300.00")
    assert ledger_verify() == []


def test_cap_west_of_utc_keeps_the_local_day_after_utc_midnight(make_program, purchase):
    program = make_program(timezone="America/New_York", max_earn_per_day=D("250"))

    with time_machine.travel(at(2026, 11, 27, 23, 30), tick=False):  # 18:30 in New York
        purchase(program, amount="10000")
    with time_machine.travel(at(2026, 11, 28, 4, 59), tick=False):  # 23:59 New York
        assert purchase(program, amount="10000").entry.points == D("50.00")
    with time_machine.travel(at(2026, 11, 28, 5, 0), tick=False):  # 00:00 New York
        assert purchase(program, amount="10000").entry.points == D("200.00")


def test_cap_applies_to_referral_and_campaign_points_too(make_program, purchase, award):
    program = make_program(max_earn_per_day=D("250"))
    purchase(program, amount="10000")  # 200

    result = award(program, "100", type="referral")

    assert result.entry.points == D("50.00")
    assert result.as_dict()["breakdown"]["capped_by"] == "daily_cap"


def test_cap_is_per_member(make_program, purchase):
    program = make_program(max_earn_per_day=D("200"))
    purchase(program, member_id="a", amount="10000")

    assert purchase(program, member_id="b", amount="10000").entry.points == D("200.00")


def test_no_cap_when_max_earn_per_day_is_null(program, purchase):
    for _ in range(3):
        purchase(program, amount="100000")
    assert balance_of(program).points_balance == D("6000.00")
