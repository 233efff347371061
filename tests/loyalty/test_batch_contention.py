"""Concurrent set-based batches of one program: the members whose balance is free are run and
committed at once, the busy members' items afterwards, waiting for their balances in order;
every item still answers what `event_ingest` one by one would."""

import random
import threading
import time
import uuid
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models import Sum

from audit.verify import audit_verify
from loyalty.errors import BudgetExhausted, IdempotencyKeyReused
from loyalty.models import BudgetShard, LedgerEntry, MemberBalance
from loyalty.services import event_ingest
from loyalty.services.batch import _left_for_later, events_ingest_batch
from loyalty.services.ingestion import IngestResult
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory
from tests.parallel import join_all, run_parallel, start_thread

D = Decimal
pytestmark = pytest.mark.django_db


def purchase(member, key, amount="10000"):
    return PurchaseFactory(
        member_id=member, amount=D(amount), idempotency_key=key, reference=f"order-{key}"
    )


# --- which items wait for the second pass (no database) ------------------------------------


class _Program:
    id = uuid.UUID(int=1)


def _items(*pairs):
    return [(_Program, purchase(member, key)) for member, key in pairs]


def _left(items, busy):
    # Members are (program key, member id): the batch keys a program by its id's int.
    return _left_for_later(items, list(range(len(items))), {(_Program.id.int, m) for m in busy})


def test_every_item_of_a_busy_member_is_left_for_the_second_pass():
    items = _items(("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"))
    assert _left(items, {"a"}) == [0, 2]
    assert _left(items, set()) == []


def test_a_member_with_a_key_an_earlier_left_item_carries_is_left_too_and_so_on():
    # b's item 3 repeats busy a's key 1: run first, it would take the key from a; b is left,
    # so c (who repeats b's key 2 later) is left too. d repeats c's key only before c's item.
    items = _items(
        ("a", "1"), ("b", "2"), ("d", "5"), ("b", "1"), ("c", "5"), ("c", "2"), ("e", "6")
    )
    assert _left(items, {"a"}) == [0, 1, 3, 4, 5]


def test_a_later_twin_of_a_first_pass_key_stays_behind_in_the_second_pass_only():
    # b's key 1 comes first and runs in the first pass; busy a's later item with that key is
    # answered from the stored entry in the second.
    items = _items(("b", "1"), ("a", "1"))
    assert _left(items, {"a"}) == [1]


# --- PostgreSQL: real threads --------------------------------------------------------------


def _hold_balance(program, member_id, held: threading.Event, release: threading.Event):
    def hold():
        with transaction.atomic():
            MemberBalance.objects.select_for_update().get(program=program, member_id=member_id)
            held.set()
            release.wait(30)

    return hold


def _member_entries(program, *members) -> dict:
    """{member: entry count}, read on this thread's own connection (committed rows only)."""
    return {
        m: LedgerEntry.objects.filter(program=program, balance__member_id=m).count()
        for m in members
    }


def _until(condition, seconds=10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _with_busy_member(program, actor, items, busy, check_while_held):
    """Runs the batch while another transaction holds `busy`'s balance; `check_while_held()`
    runs once the batch waits for it; returns the batch's outcomes."""
    held, release = threading.Event(), threading.Event()
    results: dict = {}
    threads = [start_thread(results, "holder", _hold_balance(program, busy, held, release))]
    assert held.wait(10)
    threads.append(
        start_thread(results, "batch", lambda: events_ingest_batch(items=items, actor=actor))
    )
    try:
        check_while_held(results)
    finally:
        release.set()
        join_all(threads)
    assert results["holder"] is None, results["holder"]
    return results["batch"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_busy_members_items_wait_while_the_others_are_committed_at_once(program, actor):
    event_ingest(program=program, event=purchase("busy", "before"), actor=actor)
    items = [
        (program, purchase("a", "a1")),
        (program, purchase("busy", "busy1")),
        (program, purchase("new", "n1")),  # no balance yet
        (program, purchase("busy", "busy2", amount="5000")),
        (program, purchase("a", "a2", amount="2500")),
    ]

    def while_held(results):
        # Seen from a third connection while the busy balance is still held.
        assert _until(lambda: _member_entries(program, "a", "new") == {"a": 2, "new": 1})
        time.sleep(0.2)
        assert _member_entries(program, "busy") == {"busy": 1}
        assert "batch" not in results  # still waiting for the busy member

    outcomes = _with_busy_member(program, actor, items, "busy", while_held)
    assert [o.entry.points for o in outcomes] == [D(p) for p in ("200", "200", "200", "100", "50")]
    assert not any(o.replayed for o in outcomes)
    busy = MemberBalance.objects.get(program=program, member_id="busy")
    assert busy.points_balance == D("500")
    # The busy member's items ran in their order, after the others.
    entries = LedgerEntry.objects.filter(program=program).exclude(idempotency_key="before")
    assert list(entries.order_by("id").values_list("idempotency_key", "balance_after")) == [
        ("a1", D("200")),
        ("n1", D("200")),
        ("a2", D("250")),
        ("busy1", D("400")),
        ("busy2", D("500")),
    ]
    assert outcomes[3].entry.balance_after == D("500")
    assert ledger_verify() == []
    assert audit_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_key_committed_by_the_first_pass_is_answered_from_it_in_the_second(program, actor):
    """`x` (free) takes key k first, then busy `busy` sends k: one by one, its item is refused
    as the key's reuse, and so it is, from the entry the first pass committed. A key sent
    again by the member who holds it is its replay, whichever pass."""
    event_ingest(program=program, event=purchase("busy", "before"), actor=actor)
    items = [
        (program, purchase("x", "k")),
        (program, purchase("x", "k")),
        (program, purchase("busy", "k")),
        (program, purchase("busy", "before")),
        (program, purchase("busy", "b1")),
    ]

    def while_held(results):
        assert _until(lambda: _member_entries(program, "x") == {"x": 1})
        assert "batch" not in results

    outcomes = _with_busy_member(program, actor, items, "busy", while_held)
    assert not outcomes[0].replayed
    assert outcomes[1].replayed
    assert outcomes[1].entry.pk == outcomes[0].entry.pk
    assert isinstance(outcomes[2], IdempotencyKeyReused)
    assert outcomes[3].replayed
    assert outcomes[4].entry.points == D("200")
    assert LedgerEntry.objects.filter(program=program, idempotency_key="k").count() == 1
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_member_repeating_a_busy_members_earlier_key_waits_with_it(program, actor):
    """Busy `busy` sends k first; `x` then sends k too: `x` waits for the second pass, where
    `busy` takes k as one by one, and `x`'s other item waits with it, in its order."""
    event_ingest(program=program, event=purchase("busy", "before"), actor=actor)
    items = [
        (program, purchase("busy", "k")),
        (program, purchase("x", "x1")),
        (program, purchase("x", "k")),
        (program, purchase("free", "f1")),
    ]

    def while_held(results):
        assert _until(lambda: _member_entries(program, "free") == {"free": 1})
        time.sleep(0.2)
        assert _member_entries(program, "x") == {"x": 0}

    outcomes = _with_busy_member(program, actor, items, "busy", while_held)
    assert [outcomes[i].entry.points for i in (0, 1, 3)] == [D("200")] * 3
    assert isinstance(outcomes[2], IdempotencyKeyReused)
    entry = LedgerEntry.objects.get(program=program, idempotency_key="k")
    assert entry.balance.member_id == "busy"
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_new_member_left_for_the_second_pass_and_refused_there_is_not_left_behind(program, actor):
    """New `y` repeats busy `busy`'s earlier key: `y` waits for the second pass, so the first
    takes back the balance it created for `y`; the second creates it again, `y`'s item is the
    key's reuse there, and that balance goes too. New `x`, also left, is paid in the second
    pass and keeps its balance."""
    event_ingest(program=program, event=purchase("busy", "before"), actor=actor)
    items = [
        (program, purchase("busy", "k")),
        (program, purchase("y", "k")),
        (program, purchase("x", "k")),
        (program, purchase("x", "x1")),
        (program, purchase("free", "f1")),
    ]

    def while_held(results):
        assert _until(lambda: _member_entries(program, "free") == {"free": 1})
        assert not MemberBalance.objects.filter(program=program, member_id__in=["x", "y"])

    outcomes = _with_busy_member(program, actor, items, "busy", while_held)
    assert [outcomes[i].entry.points for i in (0, 3, 4)] == [D("200")] * 3
    assert isinstance(outcomes[1], IdempotencyKeyReused)
    assert isinstance(outcomes[2], IdempotencyKeyReused)
    members = MemberBalance.objects.filter(program=program).values_list("member_id", flat=True)
    assert sorted(members) == ["busy", "free", "x"]
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_shared_members_apply_each_key_once_within_the_budget(
    make_program, actor
):
    """Six batches of one program at once over twelve members, some keys in several batches,
    a budget that pays for about half of what they ask: no deadlock, one entry per key,
    the budget spent exactly, every balance its ledger's sum."""
    program = make_program(budget_limit=D("30000"))
    pool = [purchase(f"m{i % 12}", f"k{i}") for i in range(300)]  # 200 points each
    rng = random.Random(11)
    batches = [rng.sample(pool, 50) for _ in range(6)]

    def work(i):
        return events_ingest_batch(items=[(program, e) for e in batches[i]], actor=actor)

    results = run_parallel(len(batches), work)
    by_key: dict = {}
    for events, outcomes in zip(batches, results, strict=True):
        assert isinstance(outcomes, list), outcomes
        for event, outcome in zip(events, outcomes, strict=True):
            assert isinstance(outcome, IngestResult | BudgetExhausted), outcome
            if isinstance(outcome, IngestResult):
                by_key.setdefault(event.idempotency_key, set()).add(outcome.entry.pk)
    assert all(len(ids) == 1 for ids in by_key.values())  # every answer names one entry
    entries = LedgerEntry.objects.filter(program=program)
    assert entries.count() == len(by_key)
    awarded = entries.aggregate(s=Sum("points"))["s"]
    spent = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    assert awarded == spent == D("30000")  # XOF, 1 per point: exactly the limit, never more
    assert all(s.spent <= s.allocated for s in BudgetShard.objects.filter(program=program))
    assert ledger_verify() == []
    assert audit_verify() == []
    call_command("loyalty_verify")  # raises CommandError on any mismatch
