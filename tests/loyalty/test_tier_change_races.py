"""A purchase that waits for its member's balance while the tier job moves the member earns at
the multiplier of the tier it then reads, never at one of no tier."""

import threading
from decimal import Decimal

import pytest
from django.db import transaction

from loyalty.actors import system_actor
from loyalty.models import MemberBalance
from loyalty.services import TierInput, event_ingest
from loyalty.services.jobs import job_create, job_run
from loyalty.verify import ledger_verify
from tests.factories import PointsEventFactory, PurchaseFactory
from tests.parallel import join_all, start_thread, wait_for_lock_waiters

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

D = Decimal


def _holding_the_balance(program, member_id, locked: threading.Event, release: threading.Event):
    """A write of the member (any event takes this lock) that holds it until `release`."""

    def work():
        with transaction.atomic():
            MemberBalance.objects.select_for_update().get(program=program, member_id=member_id)
            locked.set()
            assert release.wait(20)
        return "released"

    return work


def _tier_job(program):
    return job_run(job_id=job_create(kind="tier_evaluation", program=program,
                                     actor=system_actor("test")).pk)  # fmt: skip


def test_a_purchase_queued_behind_an_upgrade_earns_at_the_new_tiers_multiplier(make_program, actor):
    program = make_program(
        tiers=[
            TierInput("basic", D("0"), earn_multiplier=D("1")),
            TierInput("silver", D("1000"), earn_multiplier=D("1.5")),
            TierInput("gold", D("5000"), earn_multiplier=D("2")),
        ]
    )
    for points in ("1500", "4500"):  # silver at the first run; gold's points by the next
        event_ingest(program=program, event=PointsEventFactory(member_id="u1", points=D(points)),
                     actor=actor)  # fmt: skip
        if points == "1500":
            _tier_job(program)
    assert MemberBalance.objects.get(member_id="u1").tier == "silver"

    # The order: a write holds u1's balance; the tier job queues on it, the purchase behind
    # the job. The write ends, the job moves u1 to gold and commits, the purchase locks.
    locked, release = threading.Event(), threading.Event()
    results: dict = {}
    threads = [start_thread(results, "write", _holding_the_balance(program, "u1", locked, release))]
    assert locked.wait(10)
    threads.append(start_thread(results, "tiers", lambda: _tier_job(program)))
    wait_for_lock_waiters(1)
    purchase = PurchaseFactory(member_id="u1", amount=D("10000"))  # 200 base points
    threads.append(start_thread(
        results, "purchase", lambda: event_ingest(program=program, event=purchase, actor=actor)
    ))  # fmt: skip
    wait_for_lock_waiters(2)
    release.set()
    join_all(threads)

    assert not isinstance(results["purchase"], Exception), results
    assert MemberBalance.objects.get(member_id="u1").tier == "gold"
    entry = results["purchase"].entry
    breakdown = entry.details["breakdown"]
    assert (breakdown["tier"], breakdown["tier_multiplier"], entry.points) == (
        "gold", "2", D("400.00")
    )  # fmt: skip
    assert ledger_verify() == []
