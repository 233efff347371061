"""A budget without a limit still counts its spending in shards whose `spent` is NUMERIC(20,2):
an award goes to a shard with room for its cost, and once no shard has room it is refused
(ledger_limit_exceeded) with nothing written, never a database error. PostgreSQL: SQLite
cannot store amounts this close to 10^18 exactly."""

from decimal import Decimal

import pytest
from django.db.models import Sum

from loyalty.errors import LedgerLimitExceeded
from loyalty.models import BudgetShard
from loyalty.services.batch import events_ingest_batch
from loyalty.services.budget import SPENT_MAX, budget_charge
from loyalty.verify import ledger_verify
from tests.factories import PointsEventFactory

from .conftest import db_state

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def fill_shards(program, *, leave_room_in: int | None) -> BudgetShard | None:
    """Every shard of `program` one unit short of full, but shard `leave_room_in` (empty)."""
    BudgetShard.objects.filter(program=program).update(spent=SPENT_MAX - 1)
    if leave_room_in is None:
        return None
    shard = BudgetShard.objects.get(program=program, shard=leave_room_in)
    shard.spent = Decimal(0)
    shard.save(update_fields=["spent"])
    return shard


def spent_total(program) -> Decimal:
    return BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]


def test_awards_go_to_the_shard_with_room(program, award, purchase):
    shard = fill_shards(program, leave_room_in=5)
    before = spent_total(program)
    # Several events: each shard is a random pick, so a wrong pick would show.
    for i in range(12):
        award(program, "100", member_id=f"r{i}")
    purchase(program, member_id="buyer", amount="10000")  # 200 points at 0.02
    shard.refresh_from_db()
    assert shard.spent == Decimal(12 * 100 + 200)
    assert spent_total(program) == before + shard.spent
    assert ledger_verify() == []


def test_an_award_no_shard_has_room_for_is_refused_and_writes_nothing(program, award):
    fill_shards(program, leave_room_in=None)
    before = db_state()
    spent = spent_total(program)
    with pytest.raises(LedgerLimitExceeded):
        award(program, "100", member_id="late")
    assert db_state() == before
    assert spent_total(program) == spent
    assert ledger_verify() == []


def test_the_guarded_charge_finds_the_room_or_refuses(program):
    fill_shards(program, leave_room_in=3)
    assert budget_charge(program=program, points=Decimal(50)) == Decimal(50)
    assert BudgetShard.objects.get(program=program, shard=3).spent == Decimal(50)
    fill_shards(program, leave_room_in=None)
    with pytest.raises(LedgerLimitExceeded):
        budget_charge(program=program, points=Decimal(50))


def test_a_batch_uses_the_room_left_and_refuses_past_it(program, actor):
    shard = fill_shards(program, leave_room_in=7)
    # Room for 250 more in that shard (and 1 in each other): 2 x 100 fit, a third does not.
    shard.spent = SPENT_MAX - 250
    shard.save(update_fields=["spent"])
    before = spent_total(program)
    items = [
        (program, PointsEventFactory(member_id=f"b{i}", points=Decimal(100))) for i in range(3)
    ]
    results = events_ingest_batch(items=items, actor=actor)
    assert [r.entry.points for r in results[:2]] == [Decimal(100), Decimal(100)]
    assert isinstance(results[2], LedgerLimitExceeded)
    assert spent_total(program) == before + 200
    assert max(BudgetShard.objects.values_list("spent", flat=True)) <= SPENT_MAX
    assert ledger_verify() == []
