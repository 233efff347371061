"""Concurrency on PostgreSQL with real threads, each on its own connection: exactly-once
ingestion, no overdraw, no budget or daily-cap overrun, no deadlock, one voucher winner.
`ledger_verify()` is empty after each."""

import random
import threading
from decimal import Decimal

import pytest
from django.db.models import Sum

from audit.models import AuditEntry
from loyalty.errors import BudgetExhausted, InsufficientPoints, InvalidState
from loyalty.models import BudgetShard, LedgerEntry, MemberBalance, Redemption, Voucher
from loyalty.services import (
    event_ingest,
    redemption_capture,
    redemption_release,
    voucher_redeem,
)
from loyalty.services.batch import events_ingest_batch
from loyalty.services.ingestion import IngestResult
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.factories import PointsEventFactory, PurchaseFactory, RefundFactory
from tests.parallel import join_all, outcomes, run_parallel, start_thread, wait_for_lock_waiters

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

D = Decimal


def test_50_concurrent_submissions_of_one_key_write_one_entry(program, actor):
    event = PurchaseFactory(member_id="new-member", amount=D("10000"), idempotency_key="k-1")

    results = run_parallel(50, lambda i: event_ingest(program=program, event=event, actor=actor))

    assert outcomes(results) == {"IngestResult": 50}, results
    assert len({r.entry.pk for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert LedgerEntry.objects.filter(idempotency_key="k-1").count() == 1
    assert MemberBalance.objects.get(member_id="new-member").points_balance == D("200.00")
    assert AuditEntry.objects.filter(action="transaction.purchase").count() == 1
    assert ledger_verify() == []


def test_concurrent_holds_never_exceed_available(program, actor):
    event_ingest(program=program, event=PurchaseFactory(member_id="u_1"), actor=actor)  # 200

    def take(i):
        return hold(program, "30", actor, key=f"h-{i}", capture=i % 2 == 0)

    results = run_parallel(20, take)

    assert outcomes(results) == {"Redemption": 6, "InsufficientPoints": 14}, results
    assert all(isinstance(r, Redemption | InsufficientPoints) for r in results)
    balance = MemberBalance.objects.get(member_id="u_1")
    assert balance.available == D("20.00")
    assert balance.available >= 0
    assert Redemption.objects.count() == 6
    assert ledger_verify() == []


def test_concurrent_awards_never_exceed_the_budget(make_program, actor):
    # 3,000 XOF over 16 shards (187 each): the first awards take the one-shard fast path, the
    # rest the all-shard slow path.
    program = make_program(budget_limit=D("3000"))

    results = run_parallel(
        40,
        lambda i: event_ingest(
            program=program,
            event=PurchaseFactory(member_id=f"m{i}", amount=D("5000")),  # 100 points
            actor=actor,
        ),
    )

    counts = outcomes(results)
    # Anything else (a deadlock's OperationalError) shows in the message.
    assert counts == {"IngestResult": 30, "BudgetExhausted": 10}, [
        repr(r) for r in results if isinstance(r, Exception)
    ]
    assert all(isinstance(r, BudgetExhausted) or r.entry.points == 100 for r in results)
    spent = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    awarded = LedgerEntry.objects.filter(program=program).aggregate(s=Sum("points"))["s"]
    assert spent == D("3000") == awarded
    assert ledger_verify() == []


def test_concurrent_awards_never_exceed_the_daily_cap(make_program, actor):
    program = make_program(max_earn_per_day=D("550"))

    results = run_parallel(
        20,
        lambda i: event_ingest(
            program=program, event=PurchaseFactory(member_id="u_1", amount=D("5000")), actor=actor
        ),
    )

    assert outcomes(results) == {"IngestResult": 20}, results
    points = sorted((r.entry.points for r in results), reverse=True)
    assert points[:6] == [D("100")] * 5 + [D("50")]
    assert set(points[6:]) == {D("0")}
    balance = MemberBalance.objects.get(member_id="u_1")
    assert balance.points_balance == balance.earned_today == D("550.00")
    assert ledger_verify() == []


def test_interleaved_members_events_and_redemptions_do_not_deadlock(make_program, actor):
    """Two members, one program with a budget: purchases, refunds, batches holding both
    members, holds, captures and releases, all at once. Everything succeeds."""
    program = make_program(budget_limit=D("10000000"), max_earn_per_day=D("1000000"))
    members = ["alice", "bob"]
    for member in members:
        event_ingest(
            program=program,
            event=PurchaseFactory(member_id=member, amount=D("100000"), reference=f"seed-{member}"),
            actor=actor,
        )  # 2,000 points each

    def work(i):
        rng = random.Random(i)
        done = []
        for step in range(8):
            member = members[(i + step) % 2]
            kind = rng.choice(["purchase", "refund", "batch", "redeem", "release"])
            if kind == "purchase":
                event_ingest(
                    program=program,
                    event=PurchaseFactory(member_id=member, amount=D("1000")),
                    actor=actor,
                )
            elif kind == "refund":
                event_ingest(
                    program=program,
                    event=RefundFactory(
                        member_id=member, amount=D("100"), original_reference=f"seed-{member}"
                    ),
                    actor=actor,
                )
            elif kind == "batch":
                # Both members in one transaction, listed in the "wrong" order half the time.
                order = members if rng.random() < 0.5 else members[::-1]
                results = events_ingest_batch(
                    items=[(program, PurchaseFactory(member_id=m, amount=D("500"))) for m in order],
                    actor=actor,
                )
                assert all(not isinstance(r, Exception) for r in results), results
            else:
                redemption = hold(program, "10", actor, key=f"r-{i}-{step}", member_id=member)
                if kind == "redeem":
                    redemption_capture(redemption_id=redemption.pk, actor=actor)
                else:
                    redemption_release(redemption_id=redemption.pk, actor=actor)
            done.append(kind)
        return done

    results = run_parallel(12, work)

    failures = [r for r in results if isinstance(r, Exception)]
    assert failures == []
    assert sum(len(r) for r in results) == 12 * 8
    assert Redemption.objects.filter(status="pending").count() == 0
    assert ledger_verify() == []


def test_concurrent_voucher_redemption_has_exactly_one_winner(program, actor):
    event_ingest(program=program, event=PurchaseFactory(member_id="u_1"), actor=actor)
    voucher = hold(program, "100", actor, key="r", capture=True).voucher

    results = run_parallel(
        20, lambda i: voucher_redeem(voucher=Voucher.objects.get(pk=voucher.pk), actor=actor)
    )

    assert outcomes(results) == {"Voucher": 1, "VoucherNotRedeemable": 19}, results
    assert all(r.context == {"status": "redeemed"} for r in results if isinstance(r, Exception))
    assert AuditEntry.objects.filter(action="voucher.redeem").count() == 1
    assert ledger_verify() == []


def test_concurrent_capture_and_release_of_one_hold_settle_it_once(program, actor):
    event_ingest(program=program, event=PurchaseFactory(member_id="u_1"), actor=actor)
    redemption = hold(program, "100", actor, key="r")

    def settle(i):
        if i % 2:
            return redemption_release(redemption_id=redemption.pk, actor=actor).status
        return redemption_capture(redemption_id=redemption.pk, actor=actor).status

    results = run_parallel(20, settle)

    redemption.refresh_from_db()
    winner = redemption.status
    assert winner in ("completed", "cancelled")
    assert all(r == winner or isinstance(r, InvalidState) for r in results), results
    assert Voucher.objects.count() == (1 if winner == "completed" else 0)
    balance = MemberBalance.objects.get(member_id="u_1")
    assert balance.locked == 0
    assert balance.points_balance == (D("100.00") if winner == "completed" else D("200.00"))
    assert ledger_verify() == []


def test_batch_and_a_campaign_chunk_on_the_same_members_do_not_deadlock(make_program, actor):
    """Every multi-row locker takes balances in one global order. Here the batch and the
    campaign chunk need members a and b, whose id order (b first) differs from their name
    order; a third transaction holding `a` makes both queue, batch first."""
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from loyalty.models import Campaign
    from loyalty.services.balances import balance_lock
    from loyalty.services.campaigns import campaign_execute

    program = make_program()
    for member in ("b", "a"):  # b gets the lower id
        event_ingest(program=program, event=PurchaseFactory(member_id=member), actor=actor)
    campaign = Campaign.objects.create(
        program=program,
        name="welcome back",
        segment="all",
        bonus_points=D("10"),
        scheduled_at=timezone.now() - timedelta(minutes=1),
    )
    holding, release = threading.Event(), threading.Event()
    results: dict = {}

    def hold_a():
        with transaction.atomic():
            balance_lock(program=program, member_id="a")
            holding.set()
            release.wait(30)

    batch_items = [
        (program, PurchaseFactory(member_id="a", amount=D("1000"))),
        (program, PurchaseFactory(member_id="b", amount=D("1000"))),
    ]
    threads = [start_thread(results, "holder", hold_a)]
    assert holding.wait(10)
    threads.append(
        start_thread(results, "batch", lambda: events_ingest_batch(items=batch_items, actor=actor))
    )
    wait_for_lock_waiters(1)
    threads.append(
        start_thread(
            results, "campaign", lambda: campaign_execute(campaign_id=campaign.pk, actor=actor)
        )
    )
    wait_for_lock_waiters(2)
    release.set()
    join_all(threads)

    assert not isinstance(results["batch"], Exception), results["batch"]
    assert all(not isinstance(r, Exception) for r in results["batch"]), results["batch"]
    assert not isinstance(results["campaign"], Exception), results["campaign"]
    assert LedgerEntry.objects.filter(type="campaign_bonus").count() == 2
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["refund", "manual_adjust"])
def test_a_repeat_waiting_while_the_first_commits_gets_its_answer_not_a_refusal(
    make_program, actor, kind
):
    """The repeat waits on the balance lock while the first call commits. Its lock statement's
    snapshot predates that commit; a refund or adjustment must still answer the stored entry,
    not refuse what the first one already did (refund_exceeds_original, insufficient_points)."""
    program = make_program()
    event_ingest(
        program=program,
        event=PurchaseFactory(member_id="u1", amount=D("1000"), reference="o1"),
        actor=actor,
    )
    if kind == "refund":
        event = RefundFactory(member_id="u1", amount=D("1000"), original_reference="o1")
    else:
        balance = MemberBalance.objects.get(program=program, member_id="u1").points_balance
        event = PointsEventFactory(type="manual_adjust", member_id="u1", points=-balance)
    written, release = threading.Event(), threading.Event()

    def first():
        def pause(result):
            written.set()
            release.wait(10)

        return event_ingest(program=program, event=event, actor=actor, in_transaction=pause)

    results: dict = {}
    threads = [start_thread(results, "first", first)]
    assert written.wait(10)
    threads.append(
        start_thread(
            results, "repeat", lambda: event_ingest(program=program, event=event, actor=actor)
        )
    )
    wait_for_lock_waiters(1)
    release.set()
    join_all(threads)
    first_result, repeat = results["first"], results["repeat"]
    assert isinstance(repeat, IngestResult), repeat
    assert (first_result.replayed, repeat.replayed) == (False, True)
    assert repeat.entry.pk == first_result.entry.pk
    assert LedgerEntry.objects.filter(type=kind).count() == 1
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_limit_change_does_not_deadlock_with_a_new_members_award(make_program, actor):
    """An award holding the budget's shards commits a new member's balance, whose foreign
    key checks the program row at commit; a limit change holding that row waits for the
    shards. With the program locked FOR UPDATE the two waited for each other (a deadlock:
    one of them failed); it is locked FOR NO KEY UPDATE, which the check does not wait for."""
    from django.db import transaction

    from loyalty.services import program_update

    program = make_program(budget_limit=Decimal("10000"))
    holding, release = threading.Event(), threading.Event()
    results: dict = {}

    def award():
        with transaction.atomic():
            list(BudgetShard.objects.select_for_update().filter(program=program))
            MemberBalance.objects.create(program=program, member_id="new", tier="basic")
            holding.set()
            release.wait(30)
        return "committed"

    def limit_change():
        changes = {"budget_limit": Decimal("20000")}
        return program_update(program_id=program.pk, changes=changes, actor=actor)

    threads = [start_thread(results, "award", award)]
    assert holding.wait(10)
    threads.append(start_thread(results, "limit", limit_change))
    wait_for_lock_waiters()  # the limit change waits for the shards
    release.set()
    join_all(threads)
    assert results["award"] == "committed"
    assert results["limit"].budget_limit == Decimal("20000")
    allocated = BudgetShard.objects.filter(program=program).aggregate(a=Sum("allocated"))["a"]
    assert allocated == Decimal("20000")
    assert ledger_verify() == []


def test_a_repeat_that_waited_for_its_first_is_its_replay_when_that_spent_the_budget(
    make_program, actor
):
    """A repeat whose balance lock waits for the transaction writing the same event, which
    takes the last of the budget: the repeat is that entry's replay, not `budget_exhausted`
    (the lock statement's probe of the key sees the entry committed during the wait)."""
    from django.db import transaction

    from loyalty.services.ingestion import ingest_in_transaction

    program = make_program(budget_limit=Decimal("200"))  # one purchase of 10,000: 200 points
    event = PurchaseFactory(member_id="u_1", amount=Decimal("10000"), currency=program.currency)
    first_written, release = threading.Event(), threading.Event()
    results = {}

    def first():
        with transaction.atomic():
            written = ingest_in_transaction(program=program, event=event, actor=actor)
            first_written.set()
            release.wait(10)
        return written

    def repeat():
        with transaction.atomic():
            return ingest_in_transaction(program=program, event=event, actor=actor)

    threads = [start_thread(results, "first", first)]
    assert first_written.wait(10)
    threads.append(start_thread(results, "repeat", repeat))
    wait_for_lock_waiters(1)
    release.set()
    join_all(threads)
    assert isinstance(results["repeat"], IngestResult), results["repeat"]
    assert results["repeat"].replayed
    assert results["repeat"].entry.pk == results["first"].entry.pk
    assert LedgerEntry.objects.filter(program=program).count() == 1
    assert ledger_verify() == []
