"""The scheduled jobs while merchants write: point expiry, campaigns and tier evaluation run
chunk by chunk (small chunks, so they interleave) while 8 threads send purchases, batches,
holds captured or released, adjustments and partial refunds for the same members. No
deadlock, no error but the domain's refusals, every job succeeds, no hold left larger than its
balance, and the ledger verifies. Bounded: the writers stop once the six jobs have run."""

import random
import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from loyalty.actors import system_actor
from loyalty.errors import DomainError
from loyalty.models import Campaign, Job, LedgerEntry, MemberBalance, PointLot
from loyalty.services import (
    campaigns,
    event_ingest,
    expiry,
    redemption_capture,
    redemption_release,
    tiers,
)
from loyalty.services.batch import events_ingest_batch
from loyalty.services.jobs import job_create, job_run
from loyalty.verify import ledger_verify
from tests.conftest import hold
from tests.factories import PointsEventFactory, PurchaseFactory, RefundFactory
from tests.workers.test_campaigns import make_campaign

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

MEMBERS = [f"m{i:03d}" for i in range(60)]
JOBS = (
    "point_expiry", "campaign_execution", "tier_evaluation",
    "point_expiry", "campaign_execution", "point_expiry",
)  # fmt: skip


def _write_one(program, actor, rnd: random.Random) -> None:
    member = rnd.choice(MEMBERS)
    kind = rnd.randrange(6)
    if kind == 0:
        event = PurchaseFactory(member_id=member, amount=Decimal("3000"))
        event_ingest(program=program, event=event, actor=actor)
    elif kind == 1:  # the set-based batch path
        items = [(program, PurchaseFactory(member_id=m, amount=Decimal("1000")))
                 for m in rnd.sample(MEMBERS, 15)]  # fmt: skip
        events_ingest_batch(items=items, actor=actor)
    elif kind == 2:
        redemption = hold(program, "30", actor, key=f"h-{rnd.random()}", member_id=member)
        time.sleep(rnd.random() * 0.05)
        settle = redemption_capture if rnd.random() < 0.5 else redemption_release
        settle(redemption_id=redemption.pk, actor=actor)
    elif kind == 3:
        points = Decimal(rnd.choice(["-20", "20"]))
        event = PointsEventFactory(type="manual_adjust", member_id=member, points=points)
        event_ingest(program=program, event=event, actor=actor)
    elif kind == 4:  # the item-by-item batch path
        items = [(program, PointsEventFactory(type="manual_adjust", member_id=m,
                                              points=Decimal("5")))
                 for m in rnd.sample(MEMBERS, 8)]  # fmt: skip
        events_ingest_batch(items=items, actor=actor)
    else:
        event = RefundFactory(
            member_id=member, amount=Decimal("500"), original_reference=f"o-{member}"
        )
        event_ingest(program=program, event=event, actor=actor)


def test_jobs_run_beside_every_kind_of_write(make_program, actor, monkeypatch):
    for module in (expiry, tiers, campaigns):
        monkeypatch.setattr(module, "CHUNK", 7)
    program = make_program(expiry_days=30, budget_limit=Decimal("100000000"))
    for member in MEMBERS:
        purchase = PurchaseFactory(
            member_id=member, amount=Decimal("5000"), reference=f"o-{member}"
        )
        event_ingest(program=program, event=purchase, actor=actor)
        event_ingest(program=program, event=PointsEventFactory(member_id=member), actor=actor)
    PointLot.objects.update(expires_at=timezone.now() - timedelta(days=1))
    stop, errors = threading.Event(), []

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while not stop.is_set():
                try:
                    _write_one(program, actor, rnd)
                except DomainError:
                    pass  # a refusal (insufficient points, a refund past its purchase, ...)
                except Exception as exc:
                    errors.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    ended = []
    try:
        make_campaign(program, "all", "40")
        make_campaign(program, "all", "7")
        for kind in JOBS:
            job = job_run(job_id=job_create(kind=kind, program=program, actor=system_actor("t")).pk)
            ended.append((kind, job.status, job.error))
            # What is left becomes due again: the next expiry meets holds and new lots. Lots
            # are written under their member's balance lock, taken in id order (as every
            # writer of several members does): an update of them all without it deadlocked
            # with a writer's lot update.
            with transaction.atomic():
                list(MemberBalance.objects.select_for_update().filter(program=program)
                     .order_by("pk").values_list("pk", flat=True))  # fmt: skip
                PointLot.objects.filter(remaining__gt=0).update(
                    expires_at=timezone.now() - timedelta(days=1)
                )
    finally:
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(60)

    assert not any(thread.is_alive() for thread in threads), "a writer did not finish"
    assert errors == [], errors[:5]
    assert all(status == Job.Status.SUCCEEDED for _, status, _ in ended), ended
    assert set(Campaign.objects.values_list("status", flat=True)) == {"completed"}
    assert LedgerEntry.objects.filter(type="expiry").exists()
    overdrawn = MemberBalance.objects.filter(locked__gt=F("points_balance"))
    assert list(overdrawn.values_list("member_id", "locked", "points_balance")) == []
    assert ledger_verify() == []
