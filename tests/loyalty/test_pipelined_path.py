"""The single earning in its own transaction (as in production, where `event_ingest`'s atomic
block is durable): BEGIN goes with the balance lock, and the write, the caller's hook and
COMMIT go together, two round trips in all. Whatever fails on the way leaves nothing written
and the connection idle in autocommit, as Django expects it after the block."""

import itertools
import os
import re
import tempfile
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum

from loyalty.errors import AccountFrozen
from loyalty.models import BudgetShard, LedgerEntry, MemberBalance
from loyalty.services import event_ingest
from loyalty.services.programs import TierInput
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory

from .conftest import balance_of, db_state

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

D = Decimal


def round_trips(action) -> int:
    """Runs `action` and counts the times the client waited for the server: each run of
    messages it sent followed by one the server sent (libpq's protocol trace)."""
    pg = connection.connection
    with tempfile.NamedTemporaryFile("r") as trace:
        fd = os.open(trace.name, os.O_WRONLY)
        try:
            pg.pgconn.trace(fd)
            action()
        finally:
            pg.pgconn.untrace()
            os.close(fd)
        directions = re.findall(r"^[^\t]*\t([FB])\t", trace.read(), flags=re.MULTILINE)
    return sum(1 for pair in itertools.pairwise(directions) if pair == ("F", "B"))


def connection_is_idle_in_autocommit() -> bool:
    from psycopg.pq import TransactionStatus

    pg = connection.connection
    return (
        connection.get_autocommit()
        and pg.autocommit
        and pg.pgconn.transaction_status == TransactionStatus.IDLE
    )


def test_an_earning_of_an_existing_member_takes_two_round_trips(program, actor, purchase):
    purchase(program, member_id="u_1")
    event = PurchaseFactory(member_id="u_1", amount=D("5000"), currency="XOF")
    results = []

    trips = round_trips(
        lambda: results.append(event_ingest(program=program, event=event, actor=actor))
    )

    assert trips == 2
    assert results[0].entry.points == D("100")
    assert LedgerEntry.objects.get(idempotency_key=event.idempotency_key).points == D("100")
    assert balance_of(program).points_balance == D("300")
    assert connection_is_idle_in_autocommit()
    assert ledger_verify() == []


def test_the_hook_writes_in_the_same_transaction_and_its_failure_writes_nothing(
    program, actor, purchase
):
    purchase(program, member_id="u_1")
    before = db_state()

    def hook(result):
        # Queued behind the event's write: the failure comes after the write was sent.
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        raise RuntimeError("the caller's write failed")

    with pytest.raises(RuntimeError):
        event_ingest(
            program=program,
            event=PurchaseFactory(member_id="u_1", amount=D("5000"), currency="XOF"),
            actor=actor,
            in_transaction=hook,
        )

    assert db_state() == before
    assert connection_is_idle_in_autocommit()
    # The connection goes on as usual.
    assert purchase(program, member_id="u_1").entry.points == D("200")


def test_a_refusal_after_the_lock_writes_nothing(program, actor, purchase):
    purchase(program, member_id="u_1")
    MemberBalance.objects.filter(program=program, member_id="u_1").update(is_frozen=True)
    before = db_state()

    with pytest.raises(AccountFrozen):
        purchase(program, member_id="u_1")

    assert db_state() == before
    assert connection_is_idle_in_autocommit()


def test_a_statement_failing_at_the_pipelines_end_rolls_back_and_is_answered(
    make_program, actor, purchase
):
    # 16 shards of 62.50: 100 points cost more than any one holds, so the write statement
    # refuses (its error arrives with COMMIT's answer) and the guarded path pays.
    program = make_program(budget_limit=D("1000"))
    purchase(program, member_id="u_1", amount="1000")  # 20 points: the member exists now

    result = purchase(program, member_id="u_1", amount="5000")

    assert result.entry.points == D("100")
    assert LedgerEntry.objects.filter(program=program).count() == 2
    spent = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    assert spent == D("120")
    assert balance_of(program).points_balance == D("120")
    assert connection_is_idle_in_autocommit()
    assert ledger_verify() == []


def test_a_members_first_event_adds_one_round_trip_for_its_balance(make_program, actor):
    tiers = [TierInput("starter"), TierInput("star", min_points=D("1000"), earn_multiplier=2)]
    program = make_program(tiers=tiers)
    event = PurchaseFactory(member_id="u_new", amount=D("5000"), currency="XOF")
    results = []

    trips = round_trips(
        lambda: results.append(event_ingest(program=program, event=event, actor=actor))
    )

    assert trips == 3  # BEGIN + lock (none found); INSERT + lock; write + COMMIT
    assert results[0].entry.points == D("100")
    assert balance_of(program, "u_new").points_balance == D("100")
    assert balance_of(program, "u_new").tier == "starter"  # the program's lowest tier
    assert connection_is_idle_in_autocommit()


def test_a_repeat_is_answered_after_the_pipeline(program, actor):
    event = PurchaseFactory(member_id="u_1", amount=D("5000"), currency="XOF")

    first = event_ingest(program=program, event=event, actor=actor)
    again = event_ingest(program=program, event=event, actor=actor)

    assert (first.replayed, again.replayed) == (False, True)
    assert again.as_dict() == first.as_dict()
    assert LedgerEntry.objects.filter(program=program).count() == 1
    assert connection_is_idle_in_autocommit()
