"""The batch's item-by-item path (refunds, adjustments) against concurrent single events: an
item whose key another request took is that item's refusal alone, and a deadlock through a
key (the batch holding every shard, a refund holding the key) is retried, not a 500."""

import threading
import time
from decimal import Decimal

import pytest
from django.db import OperationalError, transaction

from loyalty.errors import IdempotencyKeyReused
from loyalty.models import LedgerEntry, MemberBalance
from loyalty.services import event_ingest
from loyalty.services.batch import events_ingest_batch
from loyalty.services.ingestion import IngestResult, ingest_in_transaction
from loyalty.verify import ledger_verify
from tests.factories import PointsEventFactory, PurchaseFactory, RefundFactory
from tests.parallel import join_all, start_thread, wait_for_lock_waiters

D = Decimal
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def adjust(member, key, points):
    return PointsEventFactory(
        type="manual_adjust", member_id=member, idempotency_key=key, points=D(points),
        reason="correction",
    )  # fmt: skip


def _holding(program, actor, event, held: threading.Event, release: threading.Event, *, commit):
    """A single event's transaction that holds its key (a debit charges no budget shard: the
    member's balance and the key only) until `release`, then commits or rolls back."""

    def work():
        with transaction.atomic():
            ingest_in_transaction(program=program, event=event, actor=actor)
            held.set()
            assert release.wait(20)
            if not commit:
                transaction.set_rollback(True)
        return "committed" if commit else "rolled back"

    return work


def test_item_path_key_taken_meanwhile_by_another_member_is_one_items_refusal(program, actor):
    """One by one, an adjustment of x whose key k a concurrent debit of y commits first is
    refused idempotency_key_reused; the batch's other items stand (the refusal escaped the
    item's key-conflict handler, and the whole batch failed)."""
    event_ingest(program=program, event=adjust("y", "seed-y", "100"), actor=actor)
    event_ingest(program=program, event=adjust("x", "seed-x", "100"), actor=actor)

    locked, release = threading.Event(), threading.Event()
    results: dict = {}
    debit = _holding(program, actor, adjust("y", "k", "-10"), locked, release, commit=True)
    threads = [start_thread(results, "single", debit)]
    assert locked.wait(10)
    items = [
        (program, adjust("z", "z1", "7")),  # a new member, applied before x's item
        (program, adjust("x", "k", "5")),  # waits on y's uncommitted key k
    ]
    threads.append(
        start_thread(results, "batch", lambda: events_ingest_batch(items=items, actor=actor))
    )
    wait_for_lock_waiters(1)
    release.set()
    join_all(threads)

    assert results["single"] == "committed"
    batch = results["batch"]
    assert isinstance(batch, list), f"the batch raised {batch!r}"
    assert isinstance(batch[0], IngestResult)
    assert isinstance(batch[1], IdempotencyKeyReused)
    assert MemberBalance.objects.get(program=program, member_id="z").points_balance == D("7")
    assert LedgerEntry.objects.filter(program=program, idempotency_key="k").count() == 1
    assert ledger_verify() == []


def test_item_path_holding_every_shard_deadlocks_with_a_refund_that_took_the_key_first(
    program, actor
):
    """An item-path batch takes every budget shard of its program before its items write
    their keys; a single refund writes its entry (its key) first and then credits the budget
    (every shard busy: it waits for all of them). With a key both send, for different
    members, the batch waits on the refund's key and the refund on the batch's shards.
    PostgreSQL ends the deadlock by rolling one back, which is run again (it was a 500): as
    one by one, the first committed takes k, the other is refused idempotency_key_reused."""
    event_ingest(program=program, event=PurchaseFactory(member_id="y", reference="order-y"),
                 actor=actor)  # fmt: skip
    event_ingest(program=program, event=adjust("x", "seed-x", "100"), actor=actor)
    event_ingest(program=program, event=adjust("w", "seed-w", "100"), actor=actor)

    held, release = threading.Event(), threading.Event()
    results: dict = {}
    debit = _holding(program, actor, adjust("w", "k0", "-10"), held, release, commit=False)
    threads = [start_thread(results, "holder", debit)]
    assert held.wait(10)
    # The batch (item path: adjustments) locks x and every shard, then waits on k0.
    items = [(program, adjust("x", "k0", "5")), (program, adjust("x", "k", "5"))]
    threads.append(
        start_thread(results, "batch", lambda: events_ingest_batch(items=items, actor=actor))
    )
    wait_for_lock_waiters(1)
    # The refund of y writes key k, then waits for the shards the batch holds.
    refund = RefundFactory(member_id="y", idempotency_key="k", original_reference="order-y",
                           amount=D("10000"))  # fmt: skip
    threads.append(start_thread(
        results, "refund", lambda: event_ingest(program=program, event=refund, actor=actor)
    ))  # fmt: skip
    wait_for_lock_waiters(2)
    time.sleep(1.5)  # past deadlock_timeout: the refund's one deadlock check has run
    release.set()  # k0 is free: the batch goes on to k, held by the refund
    join_all(threads)

    assert results["holder"] == "rolled back"
    assert not isinstance(results["refund"], Exception), results["refund"]
    batch = results["batch"]
    assert not isinstance(batch, OperationalError), f"the batch raised {batch!r}"
    assert isinstance(batch, list), f"the batch raised {batch!r}"
    assert isinstance(batch[0], IngestResult)
    assert isinstance(batch[1], IdempotencyKeyReused)
    assert ledger_verify() == []
