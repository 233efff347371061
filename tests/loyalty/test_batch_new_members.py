"""A batch leaves no member behind that the same events one by one would not make: a member
none of whose items wrote an entry (every one refused) has no balance afterwards, on both
paths, while a concurrent event of that member neither waits forever nor loses its balance or
its entry. The batch creates its new members' balances in the transaction that runs their
items and takes back, before it commits, those that got no entry (the database lets only that
transaction delete them)."""

import threading
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from loyalty.errors import (
    BudgetExhausted,
    DomainError,
    IdempotencyKeyReused,
    InsufficientPoints,
)
from loyalty.models import LedgerEntry, MemberBalance
from loyalty.services import batch as batch_module
from loyalty.services import event_ingest
from loyalty.services.batch import events_ingest_batch
from loyalty.services.ingestion import IngestResult, ingest_in_transaction
from loyalty.verify import ledger_verify
from tests.factories import PointsEventFactory, PurchaseFactory
from tests.parallel import join_all, start_thread, wait_for_lock_waiters

pytestmark = pytest.mark.django_db

D = Decimal


def purchase(member, key, amount="10000"):  # 200 points at the test program's rate
    return PurchaseFactory(
        member_id=member, amount=D(amount), idempotency_key=key, reference=f"order-{key}"
    )


def adjust(member, key, points):
    return PointsEventFactory(
        member_id=member, points=D(points), type="manual_adjust", idempotency_key=key
    )


def members(program) -> set[str]:
    return set(MemberBalance.objects.filter(program=program).values_list("member_id", flat=True))


def alone(program, event, actor):
    """The event through the single path: its refusal (and that it made no member)."""
    try:
        event_ingest(program=program, event=event, actor=actor)
    except DomainError as error:
        assert not MemberBalance.objects.filter(program=program, member_id=event.member_id)
        return error
    raise AssertionError("expected a refusal")


def clean() -> None:
    assert ledger_verify() == []
    call_command("loyalty_verify")  # exits 1 on any mismatch


# --- the reviewer's three cases, and their neighbours ------------------------------------------


def test_a_new_member_refused_for_the_budget_is_not_left_behind(make_program, actor):
    """Set-based path: the budget pays the first new member only."""
    program = make_program(budget_limit=D("200"))
    results = events_ingest_batch(
        items=[(program, purchase("paid", "k1")), (program, purchase("broke", "k2"))],
        actor=actor,
    )
    assert results[0].entry.points == D("200")
    assert isinstance(results[1], BudgetExhausted)
    assert members(program) == {"paid"}
    assert type(alone(program, purchase("broke", "k3"), actor)) is BudgetExhausted
    clean()


def test_a_new_member_whose_key_is_reused_is_not_left_behind(program, actor):
    """Set-based path: a key stored for another event, sent for a member never seen."""
    event_ingest(program=program, event=purchase("a", "k"), actor=actor)
    error = alone(program, purchase("ghost-1", "k"), actor)
    assert isinstance(error, IdempotencyKeyReused)
    [outcome] = events_ingest_batch(items=[(program, purchase("ghost-2", "k"))], actor=actor)
    assert isinstance(outcome, IdempotencyKeyReused)
    # In-batch too: the first item takes the key, the second (a new member) reuses it.
    results = events_ingest_batch(
        items=[(program, purchase("b", "k-b")), (program, purchase("ghost-3", "k-b"))],
        actor=actor,
    )
    assert isinstance(results[0], IngestResult)
    assert isinstance(results[1], IdempotencyKeyReused)
    assert members(program) == {"a", "b"}
    clean()


def test_a_negative_adjustment_of_a_new_member_in_a_mixed_batch_is_not_left_behind(program, actor):
    """Item-by-item path (an adjustment is not an earning): a debit of a member with no points
    is refused; the batch's other items are written."""
    assert isinstance(alone(program, adjust("ghost", "adj-0", "-5"), actor), InsufficientPoints)
    results = events_ingest_batch(
        items=[
            (program, purchase("a", "p1")),
            (program, adjust("ghost", "adj-1", "-5")),
            (program, adjust("b", "adj-2", "7")),
        ],
        actor=actor,
    )
    assert results[0].entry.points == D("200")
    assert isinstance(results[1], InsufficientPoints)
    assert results[2].entry.points == D("7")
    assert members(program) == {"a", "b"}
    clean()


def test_item_by_item_a_new_member_refused_for_the_budget_or_a_reused_key_is_not_left(
    make_program, actor
):
    program = make_program(budget_limit=D("210"))
    event_ingest(program=program, event=adjust("a", "stored", "10"), actor=actor)
    results = events_ingest_batch(
        items=[
            (program, adjust("a", "adj", "1")),  # not an earning: item by item
            (program, purchase("paid", "p1")),  # 199 points: what is left
            (program, purchase("broke", "p2")),
            (program, purchase("reuser", "stored")),  # a key stored before
            (program, purchase("reuser-2", "p1")),  # a key taken earlier in the batch
        ],
        actor=actor,
    )
    assert results[1].entry.points == D("199")
    assert isinstance(results[2], BudgetExhausted)
    assert isinstance(results[3], IdempotencyKeyReused)
    assert isinstance(results[4], IdempotencyKeyReused)
    assert members(program) == {"a", "paid"}
    clean()


def test_a_new_member_keeps_the_balance_when_one_of_its_items_is_written(program, actor):
    event_ingest(program=program, event=purchase("a", "k"), actor=actor)
    for path, extra in (("set", []), ("items", [(program, adjust("a", "adj", "1"))])):
        member = f"new-{path}"
        results = events_ingest_batch(
            items=[
                *extra,
                (program, purchase(member, "k")),  # the key's reuse: refused
                (program, purchase(member, f"own-{path}")),
            ],
            actor=actor,
        )
        assert isinstance(results[-2], IdempotencyKeyReused)
        assert results[-1].entry.points == D("200")
        balance = MemberBalance.objects.get(program=program, member_id=member)
        assert balance.points_balance == D("200")
    clean()


@pytest.mark.postgres
def test_taking_back_costs_a_statement_only_when_a_new_member_got_nothing(program, actor):
    """No DELETE while every member exists or every new member is paid; one when a new
    member's items were all refused."""
    event_ingest(program=program, event=purchase("old", "k0"), actor=actor)

    def deletes(items):
        with CaptureQueriesContext(connection) as queries:
            events_ingest_batch(items=items, actor=actor)
        return [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]

    assert deletes([(program, purchase("old", "k1"))]) == []
    assert deletes([(program, purchase("new", "k2")), (program, purchase("old", "k3"))]) == []
    assert deletes([(program, adjust("old", "a1", "1")), (program, purchase("n2", "k4"))]) == []
    assert len(deletes([(program, purchase("ghost", "k0"))])) == 1
    assert (
        len(deletes([(program, adjust("old", "a2", "1")), (program, adjust("g", "a3", "-1"))])) == 1
    )
    assert members(program) == {"old", "new", "n2"}


# --- PostgreSQL: a concurrent event of the same new member -------------------------------------


def _paused_before_commit(monkeypatch, member: str):
    """Makes the batch stop once it has run its items, its new balances still uncommitted,
    until `release` is set; `paused` is set when it stops (only for a batch creating
    `member`)."""
    paused, release = threading.Event(), threading.Event()
    original = batch_module._balances_unused_delete

    def pausing(created, written):
        if any(m == member for _, m in created.values()):
            paused.set()
            assert release.wait(30)
        return original(created, written)

    monkeypatch.setattr(batch_module, "_balances_unused_delete", pausing)
    return paused, release


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["set", "items"])
def test_a_single_event_waiting_for_a_balance_the_batch_takes_back_creates_its_own(
    program, actor, monkeypatch, path
):
    """The batch inserts x's balance, x's item is refused; meanwhile a single event of x
    waits on that uncommitted row (its own insert). The batch takes the row back and commits:
    the single event then creates x's balance and writes its entry, nothing lost."""
    event_ingest(program=program, event=purchase("a", "k"), actor=actor)
    refused = purchase("x", "k") if path == "set" else adjust("x", "adj", "-5")
    paused, release = _paused_before_commit(monkeypatch, "x")
    results: dict = {}
    threads = [
        start_thread(
            results, "batch", lambda: events_ingest_batch(items=[(program, refused)], actor=actor)
        )
    ]
    assert paused.wait(10)
    threads.append(
        start_thread(
            results,
            "single",
            lambda: event_ingest(program=program, event=purchase("x", "s1"), actor=actor),
        )
    )
    try:
        wait_for_lock_waiters()  # the single event, on the batch's uncommitted row
    finally:
        release.set()
        join_all(threads)
    [outcome] = results["batch"]
    assert isinstance(outcome, IdempotencyKeyReused if path == "set" else InsufficientPoints)
    assert isinstance(results["single"], IngestResult), results["single"]
    balance = MemberBalance.objects.get(program=program, member_id="x")
    assert balance.points_balance == D("200")
    assert list(LedgerEntry.objects.filter(balance=balance).values_list("idempotency_key")) == [
        ("s1",)
    ]
    clean()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["set", "items"])
def test_a_balance_a_concurrent_event_created_is_never_taken_back(program, actor, path):
    """A single event of x inserts x's balance first and commits while the batch waits for
    that row; x's item in the batch is refused: the batch did not create the row, so it
    stays, with the single event's entry."""
    event_ingest(program=program, event=purchase("a", "k"), actor=actor)
    refused = purchase("x", "k") if path == "set" else adjust("x", "adj", "-500")
    written, release = threading.Event(), threading.Event()
    results: dict = {}

    def single():
        with transaction.atomic():
            result = ingest_in_transaction(program=program, event=purchase("x", "s1"), actor=actor)
            written.set()
            assert release.wait(30)
        return result

    threads = [start_thread(results, "single", single)]
    assert written.wait(10)
    threads.append(
        start_thread(
            results, "batch", lambda: events_ingest_batch(items=[(program, refused)], actor=actor)
        )
    )
    try:
        wait_for_lock_waiters()  # the batch, on the single event's uncommitted row
    finally:
        release.set()
        join_all(threads)
    assert isinstance(results["single"], IngestResult), results["single"]
    [outcome] = results["batch"]
    assert isinstance(outcome, IdempotencyKeyReused if path == "set" else InsufficientPoints)
    balance = MemberBalance.objects.get(program=program, member_id="x")
    assert balance.points_balance == D("200")
    assert LedgerEntry.objects.filter(balance=balance).count() == 1
    clean()
