"""Two concurrent batches that carry the same idempotency keys in opposite orders, for other
members: each waits on the unique key index for a key the other wrote first. Neither may
fail on a deadlock: every key is written once, and the batch that comes second answers each
of those items as `event_ingest` would (a key used for another event: refused)."""

from decimal import Decimal

import psycopg
import pytest
from django.db import OperationalError, connection

from loyalty.errors import IdempotencyKeyReused
from loyalty.models import LedgerEntry
from loyalty.services.batch import events_ingest_batch
from loyalty.services.ingestion import IngestResult
from loyalty.verify import ledger_verify
from tests.factories import PointsEventFactory, PurchaseFactory
from tests.parallel import run_parallel

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

D = Decimal


def check_crossed_batches(program, actor, make_event):
    for round_ in range(3):  # the race is likely in each round, not certain
        keys = [f"crossed-{round_}-{n:03d}" for n in range(300)]

        def batch(side: int, keys=keys):
            ordered = keys if side == 0 else keys[::-1]
            items = [(program, make_event(f"side{side}-{key}", key)) for key in ordered]
            return dict(zip(ordered, events_ingest_batch(items=items, actor=actor), strict=True))

        results = run_parallel(2, batch)

        assert [r for r in results if isinstance(r, BaseException)] == []
        for key in keys:
            answers = [results[0][key], results[1][key]]
            written = [a for a in answers if isinstance(a, IngestResult) and not a.replayed]
            refused = [a for a in answers if isinstance(a, IdempotencyKeyReused)]
            assert (len(written), len(refused)) == (1, 1), (key, answers)
        assert LedgerEntry.objects.filter(idempotency_key__in=keys).count() == len(keys)
    assert ledger_verify() == []


def test_crossed_keys_in_set_based_batches_do_not_deadlock(program, actor):
    check_crossed_batches(program, actor, purchase)


def test_crossed_keys_in_item_by_item_batches_do_not_deadlock(program, actor):
    # Adjustments take the item-by-item path (a savepoint each, in item order).
    def adjustment(member, key):
        return PointsEventFactory(
            member_id=member, points=D("10"), type="manual_adjust", idempotency_key=key
        )

    check_crossed_batches(program, actor, adjustment)


def test_a_batch_writes_its_entries_in_key_order_whatever_its_item_order(program, actor):
    # The order in which a batch's COPY inserts its keys is the order it waits for a key a
    # concurrent writer holds: one order for every batch, so no two wait in a cycle.
    keys = [f"order-{n:02d}" for n in range(40)][::-1]
    items = [(program, purchase(f"m-{key}", key)) for key in keys]

    results = events_ingest_batch(items=items, actor=actor)

    assert all(isinstance(r, IngestResult) for r in results)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT idempotency_key FROM loyalty_ledgerentry WHERE program_id = %s ORDER BY ctid",
            [program.pk],
        )
        assert [row[0] for row in cursor.fetchall()] == sorted(keys)
    # Ids still follow the items' order (the balance_after chain reads them so).
    ids = [r.entry.pk for r in results]
    assert ids == sorted(ids)


def test_a_pass_a_deadlock_chose_is_answered_item_by_item(program, actor, monkeypatch):
    from loyalty.services import batch

    def deadlocked(*args, **kwargs):
        error = psycopg.errors.DeadlockDetected("deadlock detected")
        raise OperationalError(str(error)) from error

    monkeypatch.setattr(batch, "_ingest_set_pass", deadlocked)
    items = [(program, purchase(f"m{n}", f"dl-{n}")) for n in range(5)]

    results = events_ingest_batch(items=items, actor=actor)

    assert [r.entry.points for r in results] == [D("20")] * 5
    assert LedgerEntry.objects.filter(program=program).count() == 5
    assert ledger_verify() == []


def purchase(member, key):
    return PurchaseFactory(member_id=member, amount=D("1000"), idempotency_key=key)
