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


def test_an_award_no_one_shard_has_room_for_is_paid_across_shards_as_in_a_batch(program, award):
    """Every shard has room for 60: an award of 100 fits in none alone, in two together. The
    single path pays it, as the batch does (the shards in order), and the campaign chunk."""
    BudgetShard.objects.filter(program=program).update(spent=SPENT_MAX - 60)
    before = spent_total(program)
    assert award(program, "100", member_id="s").entry.points == Decimal(100)
    assert spent_total(program) == before + 100
    assert max(BudgetShard.objects.values_list("spent", flat=True)) == SPENT_MAX
    assert ledger_verify() == []


@pytest.mark.django_db(transaction=True)
def test_a_credit_on_the_slow_path_never_piles_past_what_a_shard_holds(program, purchase, refund):
    """A budget without a limit that spent 8 x 10^18 in all (half of each shard): a refund
    whose credit takes the slow path (every shard held by another transaction, e.g. a batch)
    spreads the spending over the shards in order rather than summing it into one."""
    import threading

    from django.db import transaction

    from tests.parallel import join_all, start_thread, wait_for_lock_waiters

    purchase(program, member_id="u", reference="o-1")
    BudgetShard.objects.filter(program=program).update(spent=Decimal("5E17"))
    before = spent_total(program)
    release = threading.Event()
    results: dict = {}

    def hold_every_shard():
        with transaction.atomic():
            list(BudgetShard.objects.select_for_update().filter(program=program))
            release.wait(10)
        return "released"

    holder = start_thread(results, "holder", hold_every_shard)
    wait_for_shards_held(program)
    refunding = start_thread(
        results, "refund", lambda: refund(program, "o-1", member_id="u").entry.points
    )
    wait_for_lock_waiters(1)  # the refund's credit, waiting for the shards in order
    release.set()
    join_all([holder, refunding])
    assert spent_total(program) == before + results["refund"]  # a refund's points are < 0
    assert max(BudgetShard.objects.values_list("spent", flat=True)) == SPENT_MAX
    assert ledger_verify() == []


def wait_for_shards_held(program) -> None:
    """Until no shard of `program` can be locked without waiting."""
    import time

    from django.db import transaction

    deadline = time.monotonic() + 10
    while True:
        with transaction.atomic():
            free = BudgetShard.objects.select_for_update(skip_locked=True).filter(program=program)
            if not free.exists():
                return
        assert time.monotonic() < deadline, "the shards were never held"
        time.sleep(0.02)


@pytest.mark.django_db(transaction=True)
def test_a_charge_short_of_room_waits_in_shard_order_no_deadlock(settings, make_program):
    """Two shards: one held by a charge in flight, the other filled by a charge that commits.
    A charge that finds no free shard with room waits for the shards in order, as a limit
    change (`budget_set_limit`) does: neither deadlocks, both finish."""
    import psycopg
    from django.db import connection, transaction

    from loyalty.services.budget import budget_set_limit
    from tests.parallel import join_all, start_thread, wait_for_lock_waiters

    settings.LOYALTY_BUDGET_SHARDS = 2
    db = connection.settings_dict
    for attempt in range(3):
        program = make_program(name=f"p{attempt}")
        BudgetShard.objects.filter(program=program).update(spent=SPENT_MAX - 100)
        first, second = BudgetShard.objects.filter(program=program).order_by("shard")
        busy = psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"])
        filling = psycopg.connect(
            host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=db["NAME"]
        )
        busy.execute("UPDATE loyalty_budgetshard SET spent = spent + 1 WHERE id = %s", [first.pk])
        filling.execute(
            "UPDATE loyalty_budgetshard SET spent = %s WHERE id = %s", [SPENT_MAX, second.pk]
        )
        results: dict = {}

        def charge(program=program):
            with transaction.atomic():
                return budget_charge(program=program, points=Decimal(50))

        def limit_change(program=program):
            with transaction.atomic():
                budget_set_limit(program=program, limit=None)
            return "done"

        charging = start_thread(results, "charge", charge)
        wait_for_lock_waiters(1)
        changing = start_thread(results, "limit", limit_change)
        wait_for_lock_waiters(2)
        busy.commit()
        filling.commit()
        join_all([charging, changing])
        busy.close()
        filling.close()
        assert results == {"charge": Decimal(50), "limit": "done"}
        assert spent_total(program) == 2 * SPENT_MAX - 100 + 1 + 50


@pytest.mark.django_db(transaction=True)
def test_awards_while_the_limit_is_set_and_lifted_neither_deadlock_nor_miscount(
    settings, make_program, actor
):
    """Ops set and lift a program's budget limit while awards run: a limit change locks every
    shard in order, an award that finds none free goes to them in the same order, so nothing
    deadlocks, every award is paid (the limit is far above them) and counted once."""
    import threading

    from loyalty.services import event_ingest, program_update
    from tests.parallel import run_parallel, start_thread

    settings.LOYALTY_BUDGET_SHARDS = 4
    program = make_program()
    stop = threading.Event()
    changes: dict = {}

    def change_the_limit():
        count = 0
        while not stop.is_set():
            limit = None if count % 2 else Decimal("1000000000")
            program_update(program_id=program.pk, changes={"budget_limit": limit}, actor=actor)
            count += 1
        return count

    changer = start_thread(changes, "changes", change_the_limit)

    def award_many(worker: int):
        for i in range(15):
            event = PointsEventFactory(member_id=f"w{worker}-{i}", points=Decimal(10))
            event_ingest(program=program, event=event, actor=actor)
        return "ok"

    try:
        results = run_parallel(8, award_many)
    finally:
        stop.set()
        changer.join(60)
    assert results == ["ok"] * 8
    assert changes["changes"] > 1  # (an exception there would not compare)
    assert spent_total(program) == Decimal(8 * 15 * 10)
    assert ledger_verify() == []
