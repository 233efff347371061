"""The batch path (`events_ingest_batch`) against the single path (`event_ingest`).

The same events through both, on two programs set up identically, must give the same answers,
balances, ledger, lots, outbox events, audit entries and budget, field by field; refusals
mid-batch change nothing for the refused item; replays and in-batch duplicates answer the first
result; anything but earnings goes item by item; and concurrent batches and single events on
the same members and one budget neither deadlock nor overspend."""

import random
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import Sum

from audit.models import AuditEntry
from audit.verify import audit_verify
from loyalty.actors import Actor
from loyalty.errors import (
    AccountFrozen,
    BudgetExhausted,
    CurrencyMismatch,
    DomainError,
    IdempotencyKeyReused,
    OriginalNotFound,
)
from loyalty.models import BudgetShard, LedgerEntry, MemberBalance, OutboxEvent, PointLot
from loyalty.services import event_ingest
from loyalty.services.batch import events_ingest_batch
from loyalty.services.ingestion import IngestResult, ingest_in_transaction
from loyalty.services.programs import TierInput
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.factories import PointsEventFactory, PurchaseFactory, RefundFactory
from tests.parallel import join_all, start_thread, wait_for_lock_waiters

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TIERS = [
    TierInput(name="basic"),
    TierInput(name="silver", min_points=D("1000"), earn_multiplier=D("1.25")),
    TierInput(name="gold", min_points=D("5000"), earn_multiplier=D("1.5")),
]
BALANCE_FIELDS = [
    "points_balance", "locked", "lifetime_earned", "lifetime_redeemed", "lifetime_spend",
    "tier", "churn_risk", "engagement_score", "fraud_flags", "is_frozen", "earned_day",
    "earned_today", "purchase_count", "last_purchase_at", "last_activity_at", "updated_at",
]  # fmt: skip
ENTRY_FIELDS = [
    "type", "points", "amount", "currency", "module", "reference", "idempotency_key",
    "balance_after", "reason", "details", "metadata", "actor_id", "actor_role", "occurred_at",
    "created_at",
]  # fmt: skip


def purchase(member, amount="10000", key=None, **fields):
    fields.setdefault("reference", f"order-{key or member}-{amount}")
    return PurchaseFactory(
        member_id=member, amount=D(amount), idempotency_key=key or f"k-{random.random()}", **fields
    )


def points_event(member, points, key, type="referral"):
    return PointsEventFactory(member_id=member, points=D(points), idempotency_key=key, type=type)


def answer(outcome):
    """What a caller sees of one item, without the ids that differ between two programs."""
    if isinstance(outcome, DomainError):
        return (type(outcome).__name__, outcome.code, outcome.detail, outcome.context)
    body = outcome.as_dict()
    del body["transaction_id"]
    return (outcome.replayed, body)


def twins(make_program, **fields):
    """Two identical programs: one fed one event at a time, one fed batches."""
    return make_program(name="single", **fields), make_program(name="batch", **fields)


def run_both(single, batch, actor, events):
    """The events through `event_ingest` one by one on `single` and as one batch on `batch`."""
    one_by_one = []
    for event in events:
        try:
            one_by_one.append(event_ingest(program=single, event=event, actor=actor))
        except DomainError as error:
            one_by_one.append(error)
    together = events_ingest_batch(items=[(batch, event) for event in events], actor=actor)
    assert [answer(o) for o in together] == [answer(o) for o in one_by_one]
    return one_by_one, together


def program_rows(program):
    """Everything the writes left for `program`, comparable across two programs: entries by
    their rank in the program's ledger. Entries of the set-up (before NOW) are compared by
    their effect only: a redemption's reference names its own id."""
    entries = list(LedgerEntry.objects.filter(program=program).order_by("id"))
    ids = {e.pk: i for i, e in enumerate(entries)}
    entries = [e for e in entries if e.created_at >= NOW]
    balances = {
        b.member_id: {f: getattr(b, f) for f in BALANCE_FIELDS}
        for b in MemberBalance.objects.filter(program=program, entries__isnull=False).distinct()
    }
    outbox = sorted(
        (
            e.event_type,
            ids[int(e.payload["transaction_id"])],
            {k: v for k, v in e.payload.items() if k not in ("transaction_id", "program_id")},
        )
        for e in OutboxEvent.objects.filter(program=program, created_at__gte=NOW)
    )
    audit = sorted(
        (a.action, ids[int(a.entity_id)], a.actor_id, a.actor_role, a.changes, a.created_at)
        for a in AuditEntry.objects.filter(
            entity_type="transaction", entity_id__in=[str(e.pk) for e in entries]
        )
    )
    return {
        "entries": [(e.balance.member_id, *(getattr(e, f) for f in ENTRY_FIELDS)) for e in entries],
        "balances": balances,
        "lots": [
            (
                lot.balance.member_id,
                ids[lot.entry_id],
                lot.points,
                lot.remaining,
                lot.earned_at,
                lot.expires_at,
            )
            for lot in PointLot.objects.filter(program=program).order_by("id")
        ],
        "outbox": outbox,
        "audit": audit,
        "budget_spent": BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"],
    }


def assert_same_rows(single, batch):
    rows_single, rows_batch = program_rows(single), program_rows(batch)
    for name in rows_single:
        assert rows_batch[name] == rows_single[name], name
    # The same members, too: a member whose every item was refused has no balance on either
    # path (the batch takes back the balances it created for such members).
    assert set(MemberBalance.objects.filter(program=batch).values_list("member_id", flat=True)) == (
        set(MemberBalance.objects.filter(program=single).values_list("member_id", flat=True))
    )
    assert ledger_verify() == []
    assert audit_verify() == []


def member_setup(program, actor):
    """The same history on each twin, yesterday: a gold member SIRA favours, a frozen one, one
    under fraud review, one owing points after a refund of spent points, a regular."""
    event_ingest(program=program, event=purchase("gold", key="s-gold"), actor=actor)
    MemberBalance.objects.filter(program=program, member_id="gold").update(
        tier="gold", churn_risk=D("0.8"), engagement_score=D("0.9"), lifetime_spend=D("20000")
    )
    for member in ("frozen", "flagged", "regular"):
        event_ingest(program=program, event=purchase(member, key=f"s-{member}"), actor=actor)
    MemberBalance.objects.filter(program=program, member_id="frozen").update(is_frozen=True)
    MemberBalance.objects.filter(program=program, member_id="flagged").update(
        fraud_flags=[{"code": "manual_review"}]
    )
    event_ingest(
        program=program,
        event=purchase("debt", amount="20000", key="s-debt", reference="order-debt"),
        actor=actor,
    )
    hold(program, "300", actor, key="s-debt-redeem", member_id="debt", capture=True)
    event_ingest(
        program=program,
        event=RefundFactory(
            member_id="debt",
            amount=D("20000"),
            original_reference="order-debt",
            idempotency_key="s-debt-refund",
        ),
        actor=actor,
    )
    assert balance_of(program, "debt").points_balance < 0


def test_a_batch_answers_and_writes_exactly_what_single_events_do(make_program, actor):
    single, batch = twins(
        make_program,
        tiers=TIERS,
        sira_settings={},  # the seed's eight rules, on
        max_earn_per_day=D("1500"),
        budget_limit=D("20000"),
    )
    with time_machine.travel(NOW - timedelta(days=1), tick=False):
        for program in (single, batch):
            member_setup(program, actor)
    events = [
        purchase("gold", amount="30000", module="eats", key="b-0"),
        purchase("new-1", amount="600", key="b-1"),
        points_event("new-1", "50", key="b-2"),
        purchase("frozen", key="b-3"),
        purchase("flagged", key="b-4"),
        purchase("debt", amount="25000", key="b-5"),  # repays the debt: the flag goes
        purchase("gold", amount="700", key="b-6"),  # second purchase of the day
        points_event("new-2", "30", key="b-7", type="campaign_bonus"),
        purchase("new-1", amount="600", key="b-1"),  # in-batch repeat of item 1
        points_event("new-1", "51", key="b-2"),  # its key, another body
        purchase("gold", key="s-gold"),  # stored yesterday: a replay
        purchase("gold", amount="1", key="s-regular"),  # stored, another body
        purchase("regular", amount="100000", key="b-12"),  # over the daily cap
        purchase("regular", amount="5000", key="b-13"),  # cap reached: 0 points
        purchase("new-3", currency="USD", key="b-14"),
        *[purchase(f"budget-{i}", amount="40000", key=f"b-{15 + i}") for i in range(30)],
    ]
    with time_machine.travel(NOW, tick=False):
        _, together = run_both(single, batch, actor, events)
    kinds = [answer(o)[0] for o in together]
    assert kinds[3:5] == ["AccountFrozen", "FraudReview"]
    assert together[8].replayed
    assert together[8].entry.pk == together[1].entry.pk
    assert kinds[9] == kinds[11] == "IdempotencyKeyReused"
    assert together[10].replayed
    assert together[12].as_dict()["breakdown"]["capped_by"] == "daily_cap"
    assert together[13].entry.points == 0
    assert kinds[14] == "CurrencyMismatch"
    # The budget runs out inside the batch: one partial award, then refusals.
    budget_caps = [
        o.as_dict()["breakdown"]["capped_by"]
        for o in together[15:]
        if not isinstance(o, DomainError)
    ]
    assert budget_caps.count("budget") == 1
    assert "BudgetExhausted" in kinds[15:]
    assert set(together[0].as_dict()["sira"]["reasons"]) >= {"high_value_transaction"}
    assert "refund_debt" not in {f["code"] for f in balance_of(batch, "debt").fraud_flags}
    assert_same_rows(single, batch)


def test_a_batch_over_several_programs_matches_single_events(make_program, actor):
    single_a, batch_a = twins(make_program, max_earn_per_day=D("300"))
    single_b, batch_b = twins(
        make_program, budget_limit=D("5.00"), currency="USD", point_value=D("0.35")
    )
    events = []
    for i in range(12):
        member = f"m{i % 4}"
        events.append(("a", purchase(member, amount=str(5000 + 25 * i), key=f"a-{i}")))
        events.append(("b", purchase(member, amount=f"{90 + i}.55", currency="USD", key=f"b-{i}")))
    with time_machine.travel(NOW, tick=False):
        one_by_one = []
        for which, event in events:
            program = single_a if which == "a" else single_b
            try:
                one_by_one.append(event_ingest(program=program, event=event, actor=actor))
            except DomainError as error:
                one_by_one.append(error)
        together = events_ingest_batch(
            items=[(batch_a if w == "a" else batch_b, e) for w, e in events], actor=actor
        )
    assert [answer(o) for o in together] == [answer(o) for o in one_by_one]
    assert any(isinstance(o, BudgetExhausted) for o in together)
    assert_same_rows(single_a, batch_a)
    assert_same_rows(single_b, batch_b)


def test_the_budget_runs_out_at_one_item_and_the_rest_change_nothing(make_program, actor):
    program = make_program(budget_limit=D("500"))
    events = [purchase(f"u{i}", key=f"k{i}") for i in range(5)]  # 200 points each
    results = events_ingest_batch(items=[(program, e) for e in events], actor=actor)
    assert [r.entry.points for r in results[:3]] == [D("200"), D("200"), D("100")]
    assert results[2].as_dict()["breakdown"]["capped_by"] == "budget"
    assert all(isinstance(r, BudgetExhausted) for r in results[3:])
    assert results[3].context == {"remaining_budget": "0.00", "currency": "XOF"}
    assert LedgerEntry.objects.filter(program=program).count() == 3
    assert not LedgerEntry.objects.filter(balance__member_id__in=["u3", "u4"]).exists()
    assert not MemberBalance.objects.filter(member_id__in=["u3", "u4"]).exists()
    assert OutboxEvent.objects.filter(program=program).count() == 3
    assert AuditEntry.objects.filter(entity_type="transaction").count() == 3
    shards = BudgetShard.objects.filter(program=program)
    assert shards.aggregate(s=Sum("spent"))["s"] == D("500")
    assert all(s.spent <= s.allocated for s in shards)
    assert ledger_verify() == []


def test_a_frozen_member_is_refused_mid_batch_and_the_others_are_awarded(program, actor):
    event_ingest(program=program, event=purchase("ice", key="first"), actor=actor)
    MemberBalance.objects.filter(member_id="ice").update(is_frozen=True)
    before = {"ice": balance_of(program, "ice").points_balance}
    state = db_state()
    results = events_ingest_batch(
        items=[
            (program, purchase("a", key="1")),
            (program, purchase("ice", key="2")),
            (program, purchase("b", key="3")),
        ],
        actor=actor,
    )
    assert isinstance(results[1], AccountFrozen)
    assert results[1].context == {"member_id": "ice"}
    assert [results[0].entry.points, results[2].entry.points] == [D("200"), D("200")]
    after = db_state()
    assert after["entries"] - state["entries"] == 2
    assert after["audit"] - state["audit"] == 2
    assert after["outbox"] - state["outbox"] == 2
    assert balance_of(program, "ice").points_balance == before["ice"]
    assert LedgerEntry.objects.filter(balance__member_id="ice").count() == 1
    assert ledger_verify() == []


def test_the_daily_cap_is_shared_by_one_members_items(make_program, actor):
    program = make_program(max_earn_per_day=D("300"))
    results = events_ingest_batch(
        items=[(program, purchase("u", key=f"k{i}")) for i in range(3)], actor=actor
    )
    assert [r.entry.points for r in results] == [D("200"), D("100"), D("0")]
    assert [r.as_dict()["breakdown"]["capped_by"] for r in results] == [
        None,
        "daily_cap",
        "daily_cap",
    ]
    balance = balance_of(program, "u")
    assert (balance.points_balance, balance.earned_today) == (D("300"), D("300"))
    assert [r.as_dict()["balance"]["points_balance"] for r in results] == [
        "200.00",
        "300.00",
        "300.00",
    ]
    assert PointLot.objects.filter(balance=balance).count() == 2  # no lot for 0 points
    assert OutboxEvent.objects.filter(program=program).count() == 2
    assert ledger_verify() == []


def test_a_repeated_batch_answers_the_first_results_and_writes_nothing(program, actor):
    events = [purchase("a", key="k1"), points_event("b", "25", key="k2"), purchase("a", key="k1")]
    first = events_ingest_batch(items=[(program, e) for e in events], actor=actor)
    assert [r.replayed for r in first] == [False, False, True]
    assert first[2].entry.pk == first[0].entry.pk
    state = db_state()
    again = events_ingest_batch(items=[(program, e) for e in events], actor=actor)
    assert all(r.replayed for r in again)
    assert [r.as_dict() for r in again] == [r.as_dict() for r in first]
    assert db_state() == state
    reused = events_ingest_batch(
        items=[(program, purchase("a", amount="5", key="k1"))], actor=actor
    )
    assert isinstance(reused[0], IdempotencyKeyReused)
    assert db_state() == state


def test_a_key_repeated_with_another_body_inside_a_batch_is_refused(program, actor):
    results = events_ingest_batch(
        items=[(program, purchase("a", key="k")), (program, purchase("b", key="k"))],
        actor=actor,
    )
    assert isinstance(results[0], IngestResult)
    assert isinstance(results[1], IdempotencyKeyReused)
    assert not MemberBalance.objects.filter(member_id="b", entries__isnull=False).exists()
    assert ledger_verify() == []


def test_a_batch_with_a_refund_goes_item_by_item_in_order(program, actor):
    results = events_ingest_batch(
        items=[
            (program, purchase("a", key="p", reference="order-1")),
            (
                program,
                RefundFactory(
                    member_id="a",
                    amount=D("5000"),
                    original_reference="order-1",
                    idempotency_key="r",
                ),
            ),
            (program, purchase("b", key="q")),
            (program, purchase("c", key="x", currency="USD")),
        ],
        actor=actor,
    )
    assert results[0].entry.points == D("200")
    assert results[1].entry.points == D("-100")
    assert results[2].entry.points == D("200")
    assert isinstance(results[3], CurrencyMismatch)
    assert balance_of(program, "a").points_balance == D("100")
    assert ledger_verify() == []


def test_a_refund_of_an_unknown_member_creates_no_member(program, actor):
    """One by one, such a refund is refused and writes nothing; in a batch it must not leave
    the member's balance behind (a member the refusal never made, who would answer 200 on
    reads and join campaign segments). A refund of a member bought for earlier in the batch
    still finds its purchase."""
    results = events_ingest_batch(
        items=[
            (program, RefundFactory(member_id="ghost", original_reference="order-9")),
            (program, purchase("a", key="p", reference="order-1")),
            (program, RefundFactory(member_id="a", amount=D("5000"), original_reference="order-1")),
        ],
        actor=actor,
    )
    assert isinstance(results[0], OriginalNotFound)
    assert results[0].context == {"original_reference": "order-9"}
    assert results[2].entry.points == D("-100")
    assert not MemberBalance.objects.filter(member_id="ghost").exists()
    assert ledger_verify() == []
    # Such a refund carrying a key already stored for another event is that key's reuse,
    # as one by one.
    reused = RefundFactory(member_id="ghost-2", original_reference="order-9", idempotency_key="p")
    [outcome] = events_ingest_batch(items=[(program, reused)], actor=actor)
    assert isinstance(outcome, IdempotencyKeyReused)


# --- PostgreSQL: real concurrency ---------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_key_taken_by_a_concurrent_request_sends_the_batch_item_by_item(make_program, actor):
    """A single request writes key `k` (for another member) and commits only once the batch
    has looked its keys up and waits on the unique index: the batch rolls back, runs item by
    item, and answers that item as the key's reuse; its other items are awarded once. (The
    single request's member is at the daily cap: it awards 0 points and holds no budget
    shard, so the only thing the batch can wait for is the key.)"""
    program = make_program(max_earn_per_day=D("200"))
    event_ingest(program=program, event=purchase("other", key="first"), actor=actor)
    written, release = threading.Event(), threading.Event()
    results: dict = {}

    def single():
        with transaction.atomic():
            result = ingest_in_transaction(
                program=program, event=purchase("other", key="k"), actor=actor
            )
            written.set()
            release.wait(30)
        return result

    threads = [start_thread(results, "single", single)]
    assert written.wait(10)
    items = [
        (program, purchase("a", key="a1")),
        (program, purchase("b", key="k")),
        (program, purchase("c", key="c1")),
    ]
    threads.append(
        start_thread(results, "batch", lambda: events_ingest_batch(items=items, actor=actor))
    )
    wait_for_lock_waiters()
    release.set()
    join_all(threads)
    batch = results["batch"]
    assert isinstance(results["single"], IngestResult)
    assert isinstance(batch[1], IdempotencyKeyReused)
    assert [batch[0].entry.points, batch[2].entry.points] == [D("200"), D("200")]
    assert LedgerEntry.objects.filter(program=program).count() == 4
    assert AuditEntry.objects.filter(entity_type="transaction").count() == 4
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_and_single_events_share_members_keys_and_one_budget(
    make_program, actor
):
    """Three batch threads and three single-event threads on ten members and one budget that
    pays for a third of what they ask; some keys are sent by both a batch and a single call."""
    program = make_program(budget_limit=D("10000"), max_earn_per_day=D("2000"))
    pool = [purchase(f"m{i % 10}", key=f"k{i}", reference=f"order-{i}") for i in range(150)]
    rng = random.Random(7)
    batches = [rng.sample(pool, 40) for _ in range(3)]
    singles = [rng.sample(pool, 20) for _ in range(3)]
    barrier = threading.Barrier(6)
    results: dict = {}

    def run_batch(events):
        barrier.wait()
        out = []
        for start in range(0, len(events), 10):
            chunk = events[start : start + 10]
            out += events_ingest_batch(items=[(program, e) for e in chunk], actor=actor)
        return out

    def run_singles(events):
        barrier.wait()
        out = []
        for event in events:
            try:
                out.append(event_ingest(program=program, event=event, actor=actor))
            except BudgetExhausted as error:
                out.append(error)
        return out

    threads = [
        start_thread(results, f"batch{i}", lambda e=e: run_batch(e)) for i, e in enumerate(batches)
    ]
    threads += [
        start_thread(results, f"single{i}", lambda e=e: run_singles(e))
        for i, e in enumerate(singles)
    ]
    join_all(threads)
    assert len(results) == len(threads)
    by_key: dict = {}
    for name, outcomes in results.items():
        assert isinstance(outcomes, list), f"{name}: {outcomes!r}"
        events = batches[int(name[-1])] if name.startswith("batch") else singles[int(name[-1])]
        for event, outcome in zip(events, outcomes, strict=True):
            assert isinstance(outcome, IngestResult | BudgetExhausted), outcome
            if isinstance(outcome, IngestResult):
                by_key.setdefault(event.idempotency_key, set()).add(outcome.entry.pk)
    assert all(len(ids) == 1 for ids in by_key.values())  # one entry per key, every answer
    entries = LedgerEntry.objects.filter(program=program)
    assert entries.count() == len(by_key)
    awarded = entries.aggregate(s=Sum("points"))["s"]
    spent = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    assert awarded == spent == D("10000")  # XOF, 1 per point: exactly the limit, never more
    for balance in MemberBalance.objects.filter(program=program):
        assert balance.earned_today <= D("2000")
    assert ledger_verify() == []


@pytest.mark.postgres
def test_a_batch_of_earnings_takes_the_same_few_statements_whatever_its_size(
    make_program, actor, django_assert_max_num_queries
):
    """Set-based: the statements do not grow with the items (one per table, not per event)."""
    program = make_program(budget_limit=D("1000000"), sira_settings={})
    items = [(program, purchase(f"u{i % 40}", key=f"k{i}")) for i in range(200)]
    # Tiers; balance insert, balance lock, shards, stored keys, keys held by pending approval
    # requests, the id draw, balance and shard UPDATEs, in a savepoint here (inside the test's
    # transaction); plus 4 COPYs, not counted. 11 statements; no second pass, and no balance
    # to take back (every new member is paid).
    with django_assert_max_num_queries(11):
        results = events_ingest_batch(items=items, actor=actor)
    assert all(isinstance(r, IngestResult) for r in results)
    assert LedgerEntry.objects.filter(program=program).count() == 200
    assert ledger_verify() == []


def test_a_batch_costing_more_than_one_shard_holds_is_paid_from_the_whole_limit(
    make_program, actor
):
    """The batch first holds one shard per program; a charge that does not fit in it sends
    the batch, rolled back, through again with every shard: the same answers as ever."""
    single, batch = twins(make_program, budget_limit=D("1600"))  # 16 shards of 100
    events = [purchase(f"u{i}", key=f"k{i}") for i in range(5)]  # 200 points each
    with time_machine.travel(NOW, tick=False):
        _, together = run_both(single, batch, actor, events)
    assert [r.entry.points for r in together] == [D("200")] * 5
    assert_same_rows(single, batch)
    shards = BudgetShard.objects.filter(program=batch)
    assert shards.aggregate(s=Sum("spent"))["s"] == D("1000")
    assert all(s.spent <= s.allocated for s in shards)


def _hold_shards(program, count: int, held: threading.Event, release: threading.Event):
    def hold():
        with transaction.atomic():
            ids = list(
                BudgetShard.objects.select_for_update()
                .filter(program=program)
                .order_by("shard")
                .values_list("pk", flat=True)[:count]
            )
            held.set()
            release.wait(30)
        return ids

    return hold


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_batch_takes_a_free_shard_instead_of_waiting_for_a_busy_one(make_program, actor):
    """Another transaction holds 15 of the program's 16 shards (a concurrent batch would hold
    one): the batch is paid from the free one without waiting."""
    program = make_program(budget_limit=D("1000000"))
    held, release = threading.Event(), threading.Event()
    results: dict = {}
    holder = start_thread(results, "holder", _hold_shards(program, 15, held, release))
    assert held.wait(10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '5s'")  # a wait would fail the test, not hang
        items = [(program, purchase(f"u{i}", key=f"k{i}")) for i in range(3)]
        outcomes = events_ingest_batch(items=items, actor=actor)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        release.set()
        join_all([holder])
    assert not isinstance(results["holder"], BaseException), results["holder"]
    assert [o.entry.points for o in outcomes] == [D("200")] * 3
    paid = BudgetShard.objects.filter(program=program, spent__gt=0)
    assert [(s.pk in results["holder"], s.spent) for s in paid] == [(False, D("600"))]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_batch_waits_for_its_programs_shards_when_every_one_is_busy(make_program, actor):
    program = make_program(budget_limit=D("1000000"))
    held, release = threading.Event(), threading.Event()
    results: dict = {}
    threads = [start_thread(results, "holder", _hold_shards(program, 16, held, release))]
    assert held.wait(10)
    items = [(program, purchase(f"u{i}", key=f"k{i}")) for i in range(3)]
    threads.append(
        start_thread(results, "batch", lambda: events_ingest_batch(items=items, actor=actor))
    )
    wait_for_lock_waiters()
    release.set()
    join_all(threads)
    assert not isinstance(results["holder"], BaseException), results["holder"]
    assert [o.entry.points for o in results["batch"]] == [D("200")] * 3
    spent = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    assert spent == D("600")
    assert ledger_verify() == []


@pytest.mark.postgres
def test_member_ids_and_keys_with_quotes_backslashes_and_commas_round_trip(program, actor):
    """They travel to PostgreSQL in array literals: every character must come back as sent,
    and a repeat must find its key."""
    odd = ['a"b', "c\\d", "e,f", "{g}", "h i", "NULL", '\\"', "é ü"]
    items = [(program, purchase(member, key=f"k{member}")) for member in odd]
    first = events_ingest_batch(items=items, actor=actor)
    assert [r.entry.details["member_id"] for r in first] == odd
    assert sorted(
        MemberBalance.objects.filter(program=program).values_list("member_id", flat=True)
    ) == sorted(odd)
    assert sorted(
        LedgerEntry.objects.filter(program=program).values_list("idempotency_key", flat=True)
    ) == sorted(f"k{m}" for m in odd)
    again = events_ingest_batch(items=items, actor=actor)
    assert all(r.replayed for r in again)
    assert [r.entry.pk for r in again] == [r.entry.pk for r in first]
    assert LedgerEntry.objects.filter(program=program).count() == len(odd)


@pytest.mark.postgres
@pytest.mark.parametrize("ip", ["10.0.0.7", "2001:db8::1"])
def test_a_batchs_audit_entries_keep_the_callers_address(program, ip):
    caller = Actor(id="checkout", role="system", ip=ip, user_agent="shop/1.0")
    items = [(program, purchase(f"u{i}", key=f"k{i}")) for i in range(2)]
    events_ingest_batch(items=items, actor=caller)
    entries = AuditEntry.objects.filter(entity_type="transaction")
    assert [(e.ip, e.user_agent) for e in entries] == [(ip, "shop/1.0")] * 2
    assert audit_verify() == []


def test_entries_and_metadata_the_batch_writes_match_single_events_whatever_their_json(
    make_program, actor
):
    """Metadata and details go to jsonb as orjson's text, or json's where orjson refuses
    (integers past 64 bits): what is stored reads back as the single path stores it."""
    single, batch = twins(make_program)
    odd = {"big": 10**30, "n": -(2**63), "f": 1.5e16, "text": 'é "q" \\ \u2028', "list": [1, None]}
    events = [
        purchase("m1", key="j-0", metadata=odd),
        purchase("m2", key="j-1", metadata={"nested": {"a": [True, False]}}),
        purchase('m"3\\', key="j-2", reference='réf \u2028 "x"'),
    ]
    with time_machine.travel(NOW, tick=False):
        run_both(single, batch, actor, events)
    assert_same_rows(single, batch)
    assert LedgerEntry.objects.get(program=batch, idempotency_key="j-0").metadata == odd


def test_an_entry_the_batch_builds_is_the_one_entry_build_makes(program, actor):
    """The batch makes its entries without Model.__init__: every field as `entry_build`'s."""
    from loyalty.services.batch import _entry_new
    from loyalty.services.ingestion import Earning, entry_build

    balance = MemberBalance.objects.create(program=program, member_id="u1", points_balance=D(7))
    event = purchase("u1", key="e-1", metadata={"a": 1})
    earning = Earning(points=D("3"), before=D("4"), fields=[], details={"breakdown": {}})
    with time_machine.travel(NOW, tick=False):
        built = entry_build(
            program, balance, event, actor, points=D("3"), details={"breakdown": {}}
        )
        fast = _entry_new(program, balance, event, actor, earning, NOW)
    fields = [f.attname for f in LedgerEntry._meta.concrete_fields]
    assert set(fields) <= set(fast.__dict__)
    assert {f: getattr(fast, f) for f in fields} == {f: getattr(built, f) for f in fields} | {
        "created_at": NOW
    }
    assert (fast.program, fast.balance, fast._state.adding) == (program, balance, False)


def test_no_init_signal_listens_to_the_models_the_batch_builds_without_init():
    """`batch._model_new` skips Model.__init__, so it would skip pre_init/post_init receivers:
    one added for these models must come with a change to it."""
    from django.db.models.signals import post_init, pre_init

    for model in (LedgerEntry, MemberBalance):
        assert not pre_init.has_listeners(model)
        assert not post_init.has_listeners(model)


def test_a_refund_of_an_unknown_member_repeating_an_earlier_items_key_is_its_reuse(
    make_program, actor
):
    """One by one, the refund finds the key the purchase just wrote: idempotency_key_reused,
    not original_not_found (its member has no balance, which the batch checks first)."""

    def events():
        return [
            PurchaseFactory(member_id="a", idempotency_key="K", reference="order-1"),
            RefundFactory(
                member_id="ghost", amount=Decimal("100"), original_reference="order-9",
                idempotency_key="K",
            ),
        ]  # fmt: skip

    single, batch = make_program(name="single"), make_program(name="batch")
    event_ingest(program=single, event=events()[0], actor=actor)
    with pytest.raises(IdempotencyKeyReused):
        event_ingest(program=single, event=events()[1], actor=actor)
    outcomes = events_ingest_batch(items=[(batch, e) for e in events()], actor=actor)
    assert isinstance(outcomes[1], IdempotencyKeyReused)
    assert not MemberBalance.objects.filter(program=batch, member_id="ghost").exists()
    assert ledger_verify() == []
