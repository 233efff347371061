"""Campaign execution: segments, once per member however often it runs (also under two
concurrent runs), the earning rules (frozen, daily cap, budget), and counts."""

import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditEntry
from audit.services import audit_seal
from audit.verify import audit_verify
from loyalty.actors import system_actor
from loyalty.models import Campaign, CampaignAward, Job, LedgerEntry, MemberBalance
from loyalty.services import balance_set_frozen
from loyalty.services.budget import budget_spent
from loyalty.services.campaigns import campaign_execute
from loyalty.verify import ledger_verify
from tests.parallel import lock_waiters, run_parallel, start_thread
from tests.workers.conftest import member

pytestmark = pytest.mark.django_db
CAMPAIGNS = Job.Kind.CAMPAIGN_EXECUTION


def make_campaign(program, segment="all", points="50", scheduled_at=None, **fields):
    return Campaign.objects.create(
        program=program,
        name=f"{segment} bonus",
        segment=segment,
        bonus_points=Decimal(points),
        scheduled_at=scheduled_at or timezone.now() - timedelta(minutes=1),
        **fields,
    )


def awarded(campaign) -> set[str]:
    return set(
        LedgerEntry.objects.filter(reference=f"campaign:{campaign.pk}").values_list(
            "balance__member_id", flat=True
        )
    )


def test_awards_segment_once_and_completes(program, earn, run_job):
    for name in ("a", "b", "c"):
        earn(program, name, "10")
    campaign = make_campaign(program, "all", "50")

    job = run_job(CAMPAIGNS, program)

    campaign.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.counts == {"awarded": 3, "failed": 0}
    assert campaign.status == Campaign.Status.COMPLETED
    assert (campaign.awarded_count, campaign.failed_count) == (3, 0)
    assert campaign.finished_at is not None
    assert member(program, "a").points_balance == Decimal("60.00")
    entry = LedgerEntry.objects.get(balance=member(program, "a"), type="campaign_bonus")
    assert entry.idempotency_key == f"campaign:{campaign.pk}:a"
    assert CampaignAward.objects.get(balance=member(program, "a")).entry_id == entry.pk
    assert AuditEntry.objects.filter(action="transaction.campaign_bonus").count() == 3
    completed = AuditEntry.objects.filter(action="campaign.complete", entity_id=str(campaign.pk))
    assert completed.exists()
    # The job's audit entries are inserted in bulk (COPY); their digests still verify.
    audit_seal()
    assert audit_verify() == []
    assert ledger_verify() == []

    # Run again, even forcing the campaign back to running: nobody is awarded twice.
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.RUNNING)
    run_job(CAMPAIGNS, program)
    assert LedgerEntry.objects.filter(type="campaign_bonus").count() == 3
    assert member(program, "a").points_balance == Decimal("60.00")


def test_not_due_draft_or_future_campaigns_wait(program, earn, run_job):
    earn(program, "a", "10")
    future = make_campaign(program, scheduled_at=timezone.now() + timedelta(hours=1))
    draft = make_campaign(program, status=Campaign.Status.DRAFT)

    run_job(CAMPAIGNS, program)

    assert awarded(future) == set()
    assert awarded(draft) == set()
    future.refresh_from_db()
    assert future.status == Campaign.Status.SCHEDULED


def test_segments(program, earn, buy, run_job):
    with time_machine.travel(datetime.fromisoformat("2026-01-01T12:00:00+00:00"), tick=False):
        earn(program, "sleeper", "10")
        earn(program, "borderline", "10")
    with time_machine.travel(datetime.fromisoformat("2026-01-02T12:00:01+00:00"), tick=False):
        earn(program, "active", "10")
        buy(program, "big", "5001")
        buy(program, "exact", "5000")
        earn(program, "risky", "10")
        earn(program, "goldie", "10")
    MemberBalance.objects.filter(member_id="risky").update(churn_risk=Decimal("0.7001"))
    MemberBalance.objects.filter(member_id="active").update(churn_risk=Decimal("0.7"))
    MemberBalance.objects.filter(member_id="goldie").update(tier="gold")

    with time_machine.travel(datetime.fromisoformat("2026-02-01T12:00:00+00:00"), tick=False):
        inactive = make_campaign(program, "inactive")
        at_risk = make_campaign(program, "at_risk")
        high_value = make_campaign(program, "high_value")
        gold = make_campaign(program, "tier_gold")
        basic = make_campaign(program, "tier_basic")
        run_job(CAMPAIGNS, program)

    # 30+ days without activity: Jan 1 12:00 is 31 days before; Jan 2 12:00:01 is not.
    assert awarded(inactive) == {"sleeper", "borderline"}
    assert awarded(at_risk) == {"risky"}
    assert awarded(high_value) == {"big"}
    assert awarded(gold) == {"goldie"}
    assert awarded(basic) == {"sleeper", "borderline", "active", "big", "exact", "risky"}
    assert ledger_verify() == []


def test_refused_members_are_counted_failed(program, earn, run_job, actor):
    earn(program, "ok", "10")
    earn(program, "frozen", "10")
    balance_set_frozen(program=program, member_id="frozen", frozen=True, actor=actor)
    campaign = make_campaign(program)

    run_job(CAMPAIGNS, program)

    campaign.refresh_from_db()
    assert (campaign.awarded_count, campaign.failed_count) == (1, 1)
    failed = CampaignAward.objects.get(balance__member_id="frozen")
    assert (failed.status, failed.error_code, failed.entry_id) == ("failed", "account_frozen", None)
    assert member(program, "frozen").points_balance == Decimal("10.00")


def test_daily_cap_in_program_timezone(make_program, earn, run_job):
    program = make_program(max_earn_per_day=Decimal("100"), timezone="America/New_York")
    with time_machine.travel(datetime.fromisoformat("2026-03-10T20:00:00-04:00"), tick=False):
        earn(program, "capped", "70")
        earn(program, "full", "100")
    # 23:30 in New York is already March 11 in UTC, but still March 10 for the program.
    with time_machine.travel(datetime.fromisoformat("2026-03-10T23:30:00-04:00"), tick=False):
        first = make_campaign(program, "all", "50")
        run_job(CAMPAIGNS, program)
    points = dict(
        LedgerEntry.objects.filter(reference=f"campaign:{first.pk}").values_list(
            "balance__member_id", "points"
        )
    )
    assert points == {"capped": Decimal("30.00")}
    entry = LedgerEntry.objects.get(reference=f"campaign:{first.pk}")
    assert entry.details["breakdown"]["capped_by"] == "daily_cap"
    first.refresh_from_db()
    assert (first.awarded_count, first.failed_count) == (1, 1)
    assert CampaignAward.objects.get(balance__member_id="full").error_code == "daily_cap_reached"

    # Half an hour after midnight in New York: a new day, a fresh allowance.
    with time_machine.travel(datetime.fromisoformat("2026-03-11T00:30:00-04:00"), tick=False):
        second = make_campaign(program, "all", "50")
        run_job(CAMPAIGNS, program)
    assert awarded(second) == {"capped", "full"}
    assert member(program, "full").earned_today == Decimal("50.00")
    assert ledger_verify() == []


def test_budget_runs_out_in_member_order(make_program, earn, run_job):
    program = make_program(budget_limit=Decimal("1000"))
    for name in ("m1", "m2", "m3", "m4"):
        earn(program, name, "200")  # 800 of the 1,000 budget spent
    campaign = make_campaign(program, "all", "150")

    run_job(CAMPAIGNS, program)

    bonuses = LedgerEntry.objects.filter(type="campaign_bonus")
    points = dict(bonuses.values_list("balance__member_id", "points"))
    assert points == {"m1": Decimal("150.00"), "m2": Decimal("50.00")}
    assert budget_spent(program=program) == Decimal("1000")
    assert set(
        CampaignAward.objects.filter(error_code="budget_exhausted").values_list(
            "balance__member_id", flat=True
        )
    ) == {"m3", "m4"}
    campaign.refresh_from_db()
    assert (campaign.awarded_count, campaign.failed_count) == (2, 2)
    assert ledger_verify() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_concurrent_runs_award_each_member_once(make_program, earn, monkeypatch):
    from loyalty.services import campaigns

    monkeypatch.setattr(campaigns, "CHUNK", 3)  # many small chunks: the runs interleave
    program = make_program()
    for i in range(20):
        earn(program, f"u{i:02d}", "10")
    campaign = make_campaign(program, "all", "25")

    results = run_parallel(
        2, lambda i: campaign_execute(campaign_id=campaign.pk, actor=system_actor("test"))
    )

    assert not any(isinstance(r, BaseException) for r in results), results
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.COMPLETED
    assert (campaign.awarded_count, campaign.failed_count) == (20, 0)
    assert LedgerEntry.objects.filter(type="campaign_bonus").count() == 20
    assert CampaignAward.objects.count() == 20
    assert all(b.points_balance == Decimal("35.00") for b in MemberBalance.objects.all())
    assert ledger_verify() == []


def test_a_campaign_postponed_after_the_job_listed_it_is_not_run(program, earn, run_job, actor):
    from loyalty.services import campaigns as campaigns_module
    from loyalty.services.campaigns_admin import campaign_update

    earn(program, "a", "10")
    first = make_campaign(program, "all", "5", scheduled_at=timezone.now() - timedelta(minutes=2))
    second = make_campaign(program, "all", "50")
    award_chunk = campaigns_module._award_chunk

    def postponing_meanwhile(**kwargs):
        if kwargs["campaign"].pk == first.pk:  # while the job works on the first one
            later = timezone.now() + timedelta(days=7)
            campaign_update(campaign_id=second.pk, changes={"scheduled_at": later}, actor=actor)
        return award_chunk(**kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(campaigns_module, "_award_chunk", postponing_meanwhile)
        run_job(CAMPAIGNS, program)
    second.refresh_from_db()
    assert second.status == Campaign.Status.SCHEDULED
    assert awarded(second) == set()
    assert member(program, "a").points_balance == Decimal("15.00")


def test_the_segment_is_the_one_when_the_campaign_started(program, buy, run_job):
    """A win-back campaign pays who was inactive when it started, and completes: members
    going inactive (or joining) during its run, or after, are not paid by it."""
    t0 = datetime.fromisoformat("2026-03-01T12:00:00+00:00")
    with time_machine.travel(t0 - timedelta(days=40), tick=False):
        buy(program, "old", "1000")
    with time_machine.travel(t0 - timedelta(days=30) + timedelta(minutes=30), tick=False):
        buy(program, "recent", "1000")  # inactive half an hour into the run
    with time_machine.travel(t0, tick=False) as clock:
        campaign = make_campaign(program, "inactive", "100", scheduled_at=t0)
        from loyalty.services import campaigns as campaigns_module

        award_chunk = campaigns_module._award_chunk

        def slow(**kwargs):
            award_chunk(**kwargs)
            clock.shift(timedelta(hours=1))

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(campaigns_module, "_award_chunk", slow)
            run_job(CAMPAIGNS, program)
        campaign.refresh_from_db()
        assert campaign.status == Campaign.Status.COMPLETED
        assert campaign.started_at == t0
        clock.shift(timedelta(days=1))
        buy(program, "newcomer", "1000")
        run_job(CAMPAIGNS, program)
    assert awarded(campaign) == {"old"}
    assert ledger_verify() == []


@pytest.mark.postgres  # SQLite cannot store totals this close to 10^18
def test_a_member_the_bonus_would_take_past_the_ledger_limit_is_a_failed_award(
    program, run_job, actor
):
    from loyalty.services import event_ingest
    from tests.factories import PointsEventFactory

    rich = PointsEventFactory(type="manual_adjust", member_id="rich", points=Decimal("9" * 18))
    event_ingest(program=program, event=rich, actor=actor)
    event_ingest(program=program, event=PointsEventFactory(member_id="poor"), actor=actor)
    campaign = make_campaign(program, "all", "900000000")
    job = run_job(CAMPAIGNS, program)
    campaign.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert campaign.status == Campaign.Status.COMPLETED
    assert (campaign.awarded_count, campaign.failed_count) == (1, 1)
    assert CampaignAward.objects.get(balance__member_id="rich").error_code == (
        "ledger_limit_exceeded"
    )
    assert ledger_verify() == []


def test_a_bonus_past_the_limit_is_refused_at_creation(api, make_program):
    from tests.api.conftest import OWN

    program = make_program(merchant_id=OWN)
    body = {"program_id": str(program.pk), "name": "huge", "segment": "all",
            "bonus_points": "1000000000.01", "scheduled_at": "2030-01-01T00:00:00Z"}  # fmt: skip
    response = api("system").post("/api/v1/campaigns", body)
    assert response.status_code == 400
    assert "bonus_points" in response.json()["errors"]


@pytest.mark.postgres  # SQLite cannot store amounts this close to 10^18
def test_a_chunk_the_budget_cannot_count_fails_its_awards(program, run_job, actor):
    """A budget without a limit whose every shard's spending total is full: the chunk's charge
    is refused (ledger_limit_exceeded) and so are its awards, with nothing written."""
    from loyalty.models import BudgetShard
    from loyalty.services import event_ingest
    from loyalty.services.budget import SPENT_MAX
    from tests.factories import PointsEventFactory

    for member_id in ("m1", "m2"):
        event_ingest(program=program, event=PointsEventFactory(member_id=member_id), actor=actor)
    BudgetShard.objects.filter(program=program).update(spent=SPENT_MAX - 1)
    campaign = make_campaign(program, "all", "1000")
    job = run_job(CAMPAIGNS, program)
    campaign.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert (campaign.awarded_count, campaign.failed_count) == (0, 2)
    assert set(CampaignAward.objects.values_list("error_code", flat=True)) == {
        "ledger_limit_exceeded"
    }
    assert ledger_verify() == []


@pytest.mark.postgres  # SQLite cannot store amounts this close to 10^18
def test_a_chunk_no_one_shard_has_room_for_is_paid_across_shards(program, run_job, actor):
    """Every shard has room for 1,500: a chunk of 2 x 1,000 fits in none alone, in the shards
    together, and both awards are paid."""
    from loyalty.models import BudgetShard
    from loyalty.services import event_ingest
    from loyalty.services.budget import SPENT_MAX
    from tests.factories import PointsEventFactory

    for member_id in ("m1", "m2"):
        event_ingest(program=program, event=PointsEventFactory(member_id=member_id), actor=actor)
    BudgetShard.objects.filter(program=program).update(spent=SPENT_MAX - 1500)
    campaign = make_campaign(program, "all", "1000")
    run_job(CAMPAIGNS, program)
    campaign.refresh_from_db()
    assert (campaign.awarded_count, campaign.failed_count) == (2, 0)
    assert max(BudgetShard.objects.values_list("spent", flat=True)) == SPENT_MAX
    assert ledger_verify() == []


def test_a_member_of_the_segment_at_the_start_is_paid_whatever_they_do_meanwhile(
    program, buy, run_job, monkeypatch
):
    """The campaign lists its members when it starts (a pending award each): a member
    inactive then who buys before their chunk runs (a long run, or one resumed later) is
    still paid by the win-back campaign, once."""
    from loyalty.services import campaigns as campaigns_module

    t0 = datetime.fromisoformat("2026-03-01T12:00:00+00:00")
    with time_machine.travel(t0 - timedelta(days=40), tick=False):
        buy(program, "a", "1000")
        buy(program, "b", "1000")
    first = member(program, "a").pk
    award_chunk = campaigns_module._award_chunk

    def then_b_buys(**kwargs):
        award_chunk(**kwargs)
        if kwargs["balance_ids"] == [first]:
            buy(program, "b", "500")  # b is active again before b's chunk

    monkeypatch.setattr(campaigns_module, "CHUNK", 1)
    monkeypatch.setattr(campaigns_module, "_award_chunk", then_b_buys)
    with time_machine.travel(t0, tick=False):
        campaign = make_campaign(program, "inactive", "100", scheduled_at=t0)
        run_job(CAMPAIGNS, program)

    campaign.refresh_from_db()
    assert awarded(campaign) == {"a", "b"}
    assert (campaign.status, campaign.awarded_count) == (Campaign.Status.COMPLETED, 2)
    assert not CampaignAward.objects.filter(campaign=campaign, status="pending").exists()
    assert ledger_verify() == []


def test_a_campaign_started_before_members_were_listed_resumes_without_paying_twice(
    program, earn, run_job
):
    """A campaign left running by a release that read the segment chunk by chunk has award
    rows but no pending ones: its next run lists who is left of its segment and pays them."""
    for name in ("a", "b", "c"):
        earn(program, name, "10")
    campaign = make_campaign(
        program, "all", "50", status=Campaign.Status.RUNNING, started_at=timezone.now()
    )
    CampaignAward.objects.create(campaign=campaign, balance=member(program, "a"))

    run_job(CAMPAIGNS, program)

    campaign.refresh_from_db()
    assert awarded(campaign) == {"b", "c"}
    assert campaign.status == Campaign.Status.COMPLETED
    assert campaign.members_listed_at is not None
    assert CampaignAward.objects.filter(campaign=campaign).count() == 3
    assert member(program, "a").points_balance == Decimal("10.00")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_campaign_start_does_not_deadlock_with_a_writer_locking_balances_in_id_order(
    make_program, earn
):
    """The start lists its members in one statement while member writes go on: it must take
    no balance lock against their id order (a foreign key check at its commit did, in the
    order its scan listed them: here m2 before m1, m1's row having moved in the heap)."""
    program = make_program()
    earn(program, "m1", "10")
    earn(program, "m2", "10")
    earn(program, "m1", "5")  # m1's live row now lies after m2's
    low, high = member(program, "m1").pk, member(program, "m2").pk
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE loyalty_memberbalance")  # as autovacuum would: a heap scan
    campaign = make_campaign(program, "all", "50")
    low_locked = threading.Event()

    def writer():  # the lock order of every multi-balance writer: ids ascending
        with transaction.atomic():
            list(MemberBalance.objects.select_for_update().filter(pk=low))
            low_locked.set()
            _until_another_waits_for_a_lock(seconds=5)
            list(MemberBalance.objects.select_for_update().filter(pk=high))
            MemberBalance.objects.filter(pk__in=[low, high]).update(updated_at=timezone.now())
        return "ok"

    results = {}
    threads = [start_thread(results, "writer", writer)]
    assert low_locked.wait(10)
    threads.append(
        start_thread(
            results,
            "campaign",
            lambda: campaign_execute(campaign_id=campaign.pk, actor=system_actor("test")),
        )
    )
    for thread in threads:
        thread.join(60)

    assert not any(isinstance(r, BaseException) for r in results.values()), results
    campaign.refresh_from_db()
    assert (campaign.status, campaign.awarded_count) == (Campaign.Status.COMPLETED, 2)
    assert ledger_verify() == []


def _until_another_waits_for_a_lock(*, seconds: float) -> None:
    """Inside a transaction: pg_stat_activity is read afresh each time (its snapshot)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
        if lock_waiters():
            return
        time.sleep(0.05)
