"""Job records: no overlapping runs of a job for the same program and day, abandoned runs,
duplicate deliveries, the housekeeping jobs, and crash-then-re-run exactly once."""

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db.models import Count
from django.utils import timezone

from audit.models import AuditEntry
from loyalty.actors import system_actor
from loyalty.models import (
    Campaign,
    CampaignAward,
    Job,
    LedgerEntry,
    MemberBalance,
    OutboxEvent,
    Redemption,
    Voucher,
)
from loyalty.services.jobs import (
    JobAlreadyRunning,
    job_create,
    job_run,
    job_run_key,
    jobs_reap_stale,
)
from loyalty.verify import ledger_verify
from tests.api.conftest import OWN
from tests.conftest import hold

pytestmark = pytest.mark.django_db
ACTOR = system_actor("test")


def test_second_active_run_same_program_and_day_is_refused(make_program):
    program, other = make_program(name="P"), make_program(name="O")
    first = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)

    with pytest.raises(JobAlreadyRunning) as refused:
        job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)

    assert refused.value.context["job_id"] == str(first.pk)
    assert refused.value.http_status == 409
    # Another program, another kind, or all programs are separate runs.
    job_create(kind=Job.Kind.TIER_EVALUATION, program=other, actor=ACTOR)
    job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)
    job_create(kind=Job.Kind.TIER_EVALUATION, actor=ACTOR)
    assert Job.objects.count() == 4
    assert AuditEntry.objects.filter(action="job.create").count() == 4
    # Once the first run ends, the same day may run again.
    job_run(job_id=first.pk)
    again = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)
    assert again.run_key == first.run_key


def test_run_key_uses_the_program_local_day(make_program):
    with time_machine.travel(datetime.fromisoformat("2026-05-01T23:30:00+00:00"), tick=False):
        tokyo = make_program(timezone="Asia/Tokyo")
        job = job_create(kind=Job.Kind.POINT_EXPIRY, program=tokyo, actor=ACTOR)
        assert job.run_key == f"point_expiry:{tokyo.pk}:2026-05-02"
        assert job_run_key(kind="point_expiry", program=None) == "point_expiry:all:2026-05-01"


def test_abandoned_run_does_not_block_the_day(program):
    with time_machine.travel(datetime.fromisoformat("2026-05-01T01:00:00+00:00"), tick=False):
        dead = job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)
        Job.objects.filter(pk=dead.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
    with time_machine.travel(datetime.fromisoformat("2026-05-01T03:00:00+00:00"), tick=False):
        fresh = job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)
    dead.refresh_from_db()
    assert dead.status == Job.Status.FAILED
    assert dead.error.startswith("abandoned")
    assert fresh.status == Job.Status.QUEUED


def _at(iso: str):
    return time_machine.travel(datetime.fromisoformat(iso), tick=False)


def _dead_run(kind, program, iso: str) -> Job:
    """A run a worker started at `iso` and died in (it never ends nor beats again)."""
    with _at(iso):
        job = job_create(kind=kind, program=program, actor=ACTOR)
        Job.objects.filter(pk=job.pk).update(
            status=Job.Status.RUNNING, started_at=timezone.now(),
            progress={"heartbeat": timezone.now().isoformat()},
        )  # fmt: skip
    return job


def test_a_dead_run_of_an_earlier_day_is_failed_by_the_next_run(api, make_program):
    program = make_program(merchant_id=OWN)
    dead = _dead_run(Job.Kind.POINT_EXPIRY, program, "2026-05-01T01:00:00+00:00")
    # Another program's and another kind's dead runs are theirs to reap, not this run's.
    other = _dead_run(Job.Kind.POINT_EXPIRY, make_program(name="O"), "2026-05-01T01:00:00+00:00")
    tiers = _dead_run(Job.Kind.TIER_EVALUATION, program, "2026-05-01T01:00:00+00:00")

    with _at("2026-05-02T03:00:00+00:00"):
        fresh = job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)
        assert job_run(job_id=fresh.pk).status == Job.Status.SUCCEEDED

    assert fresh.run_key != dead.run_key  # another day: the key alone never met the dead run
    dead.refresh_from_db()
    assert dead.status == Job.Status.FAILED
    assert dead.error.startswith("abandoned: no progress since 2026-05-01T01:00:00")
    assert dead.finished_at == datetime.fromisoformat("2026-05-02T03:00:00+00:00")
    body = api("ops_marketing").get(f"/api/v1/jobs/{dead.pk}").json()
    assert (body["status"], body["error"]) == ("failed", dead.error)
    assert Job.objects.get(pk=other.pk).status == Job.Status.RUNNING
    assert Job.objects.get(pk=tiers.pk).status == Job.Status.RUNNING


def test_a_live_run_started_before_midnight_is_left_running(program):
    live = _dead_run(Job.Kind.POINT_EXPIRY, program, "2026-05-01T23:50:00+00:00")
    with _at("2026-05-02T00:10:00+00:00"):
        job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)
    assert Job.objects.get(pk=live.pk).status == Job.Status.RUNNING


def test_the_sweep_fails_dead_and_lost_jobs_and_leaves_live_ones(make_program):
    from loyalty.tasks import jobs_reap_stale_task

    program, other = make_program(name="P"), make_program(name="O")
    dead = _dead_run(Job.Kind.TIER_EVALUATION, program, "2026-05-01T01:00:00+00:00")
    with _at("2026-05-01T01:30:00+00:00"):
        lost = job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)
        ended = job_create(kind=Job.Kind.TIER_EVALUATION, program=other, actor=ACTOR)
        job_run(job_id=ended.pk)
    live = _dead_run(Job.Kind.CAMPAIGN_EXECUTION, program, "2026-05-01T01:45:00+00:00")
    with _at("2026-05-01T02:20:00+00:00"):
        waiting = job_create(kind=Job.Kind.POINT_EXPIRY, program=other, actor=ACTOR)

    with _at("2026-05-01T02:35:00+00:00"):  # the limit is an hour (LOYALTY_JOB_STALE_SECONDS)
        assert jobs_reap_stale_task.delay().get() == 2
        assert jobs_reap_stale_task.delay().get() == 0  # nothing twice

    by_id = {j.pk: j for j in Job.objects.all()}
    assert by_id[dead.pk].status == Job.Status.FAILED
    assert by_id[dead.pk].error.startswith("abandoned: no progress since 2026-05-01T01:00:00")
    assert by_id[lost.pk].status == Job.Status.FAILED
    assert by_id[lost.pk].error.startswith("abandoned: queued at 2026-05-01T01:30:00")
    assert "never started" in by_id[lost.pk].error
    assert by_id[ended.pk].status == Job.Status.SUCCEEDED
    assert by_id[live.pk].status == Job.Status.RUNNING
    assert by_id[waiting.pk].status == Job.Status.QUEUED
    # The lost task's message, delivered at last, runs nothing.
    with _at("2026-05-01T02:40:00+00:00"):
        assert job_run(job_id=lost.pk).status == Job.Status.FAILED
    assert Job.objects.get(pk=lost.pk).started_at is None


def test_a_takeover_before_the_sweep_runs_exactly_once(program, earn):
    earn(program, "u1", "1500")
    job = _dead_run(Job.Kind.TIER_EVALUATION, program, "2026-05-01T01:00:00+00:00")
    with _at("2026-05-01T02:30:00+00:00"):
        job_run(job_id=job.pk)  # redelivered after the worker died: taken over and run
        assert jobs_reap_stale() == 0  # ended: nothing to sweep
    job.refresh_from_db()
    assert (job.status, job.progress["attempt"]) == (Job.Status.SUCCEEDED, 2)
    assert MemberBalance.objects.get(member_id="u1").tier_snapshots.count() == 1


def test_a_takeover_in_flight_is_not_swept(program, earn, monkeypatch):
    """The sweep runs while a taken-over job is mid-run: its fresh heartbeat keeps it."""
    from loyalty.services import tiers

    earn(program, "u1", "1500")
    job = _dead_run(Job.Kind.TIER_EVALUATION, program, "2026-05-01T01:00:00+00:00")
    real, swept = tiers._pass, []

    def sweep_then_pass(*args, **kwargs):
        swept.append(jobs_reap_stale())
        real(*args, **kwargs)

    monkeypatch.setattr(tiers, "_pass", sweep_then_pass)
    with _at("2026-05-01T02:30:00+00:00"):
        job_run(job_id=job.pk)
    assert swept == [0]
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert MemberBalance.objects.get(member_id="u1").tier == "silver"


def test_a_redelivery_after_the_sweep_does_nothing(program, earn):
    earn(program, "u1", "1500")
    job = _dead_run(Job.Kind.TIER_EVALUATION, program, "2026-05-01T01:00:00+00:00")
    with _at("2026-05-01T02:05:00+00:00"):
        assert jobs_reap_stale() == 1
        job_run(job_id=job.pk)  # the broker redelivers it after the sweep
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "resumed_at" not in job.progress
    assert MemberBalance.objects.get(member_id="u1").tier == "basic"  # the next run does it


def test_duplicate_delivery_runs_once(program, earn):
    earn(program, "u1", "1500")
    job = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)

    job_run(job_id=job.pk)
    job_run(job_id=job.pk)  # the broker delivered the task twice

    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.counts["upgraded"] == 1
    assert job.started_at is not None
    assert job.finished_at >= job.started_at
    assert MemberBalance.objects.get(member_id="u1").tier_snapshots.count() == 1


def test_hold_expiry_job_releases_due_holds(program, earn, run_job, actor):
    earn(program, "u1", "100")
    redemption = hold(program, "40", actor, member_id="u1")
    with time_machine.travel(timezone.now() + timedelta(seconds=program.hold_ttl_seconds + 1)):
        job = run_job(Job.Kind.HOLD_EXPIRY)
    assert job.status == Job.Status.SUCCEEDED
    assert job.counts["expired"] == 1
    redemption.refresh_from_db()
    assert redemption.status == Redemption.Status.EXPIRED
    assert MemberBalance.objects.get(member_id="u1").locked == Decimal("0.00")
    assert ledger_verify() == []


def test_approval_expiry_job_succeeds_with_or_without_the_approvals_service(run_job):
    job = run_job(Job.Kind.APPROVAL_EXPIRY)
    assert job.status == Job.Status.SUCCEEDED


def _crash_after_first_chunk(monkeypatch, module, name):
    real = getattr(module, name)
    calls = {"n": 0}

    def chunk_then_crash(**kwargs):
        real(**kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker killed")

    monkeypatch.setattr(module, name, chunk_then_crash)
    return lambda: monkeypatch.setattr(module, name, real)


def test_campaign_crash_then_rerun_awards_everyone_once(program, earn, run_job, monkeypatch):
    from loyalty.services import campaigns

    monkeypatch.setattr(campaigns, "CHUNK", 3)
    for i in range(8):
        earn(program, f"u{i}", "10")
    campaign = Campaign.objects.create(
        program=program, name="c", segment="all", bonus_points=Decimal("5"),
        scheduled_at=timezone.now() - timedelta(minutes=1),
    )  # fmt: skip
    restore = _crash_after_first_chunk(monkeypatch, campaigns, "_award_chunk")

    crashed = run_job(Job.Kind.CAMPAIGN_EXECUTION, program)

    assert crashed.status == Job.Status.FAILED
    assert "worker killed" in crashed.error
    assert crashed.counts == {"awarded": 3, "failed": 0}  # exactly what committed
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.RUNNING
    assert ledger_verify() == []

    restore()
    rerun = run_job(Job.Kind.CAMPAIGN_EXECUTION, program)

    assert rerun.status == Job.Status.SUCCEEDED
    assert rerun.counts == {"awarded": 5, "failed": 0}
    campaign.refresh_from_db()
    assert (campaign.status, campaign.awarded_count) == (Campaign.Status.COMPLETED, 8)
    per_member = LedgerEntry.objects.filter(type="campaign_bonus").values("balance").annotate(
        n=Count("id")
    )  # fmt: skip
    assert sorted(row["n"] for row in per_member) == [1] * 8
    assert CampaignAward.objects.count() == 8
    assert all(b.points_balance == Decimal("15.00") for b in MemberBalance.objects.all())
    assert ledger_verify() == []


def test_expiry_crash_then_rerun_expires_everything_once(program, earn, run_job, monkeypatch):
    from loyalty.services import expiry

    monkeypatch.setattr(expiry, "CHUNK", 2)
    with time_machine.travel(datetime.fromisoformat("2025-01-01T10:00:00+00:00"), tick=False):
        for i in range(5):
            earn(program, f"u{i}", "100")
            earn(program, f"u{i}", "20")
    restore = _crash_after_first_chunk(monkeypatch, expiry, "_expire_chunk")
    with time_machine.travel(datetime.fromisoformat("2026-01-02T00:00:00+00:00"), tick=False):
        crashed = run_job(Job.Kind.POINT_EXPIRY, program)
        assert crashed.status == Job.Status.FAILED
        assert crashed.counts["members_expired"] == 2
        assert ledger_verify() == []
        restore()
        rerun = run_job(Job.Kind.POINT_EXPIRY, program)
        assert rerun.status == Job.Status.SUCCEEDED
        assert rerun.counts["members_expired"] == 3
        run_job(Job.Kind.POINT_EXPIRY, program)  # and once more: nothing left

    expired = LedgerEntry.objects.filter(type=LedgerEntry.Type.EXPIRY)
    assert expired.count() == 5
    assert all(e.points == Decimal("-120.00") for e in expired)
    assert all(b.points_balance == 0 for b in MemberBalance.objects.all())
    assert ledger_verify() == []


def test_tier_crash_then_rerun_snapshots_each_change_once(program, earn, run_job, monkeypatch):
    from loyalty.services import tiers

    monkeypatch.setattr(tiers, "CHUNK", 2)
    for i in range(5):
        earn(program, f"u{i}", "1000")
    restore = _crash_after_first_chunk(monkeypatch, tiers, "_apply")
    crashed = run_job(Job.Kind.TIER_EVALUATION, program)
    assert crashed.status == Job.Status.FAILED
    restore()

    run_job(Job.Kind.TIER_EVALUATION, program)

    assert set(MemberBalance.objects.values_list("tier", flat=True)) == {"silver"}
    assert MemberBalance.objects.annotate(n=Count("tier_snapshots")).filter(n=1).count() == 5


def test_beat_schedules_are_installed_for_registered_tasks():
    from django_celery_beat.models import PeriodicTask

    from loyalty_project.celery import app

    schedules = {
        t.task: (t.crontab.minute, t.crontab.hour, str(t.crontab.timezone))
        for t in PeriodicTask.objects.filter(name__startswith="loyalty:").select_related("crontab")
    }
    assert schedules == {
        "loyalty.tier_evaluation": ("0", "2", "UTC"),
        "loyalty.point_expiry": ("0", "3", "UTC"),
        "loyalty.campaign_execution": ("0", "*", "UTC"),
        "loyalty.hold_expiry": ("*/5", "*", "UTC"),
        "loyalty.approval_expiry": ("*/5", "*", "UTC"),
        "loyalty.jobs_reap_stale": ("*/5", "*", "UTC"),
    }
    app.loader.import_default_modules()
    assert set(schedules) <= set(app.tasks)


def test_scheduled_task_runs_a_job_over_every_program(make_program, earn):
    from loyalty.tasks import tier_evaluation_task

    first, second = make_program(name="A"), make_program(name="B")
    earn(first, "u1", "1000")
    earn(second, "u1", "5000")

    assert tier_evaluation_task.delay().get() == Job.Status.SUCCEEDED  # in-process in tests

    job = Job.objects.get()
    assert (job.program_id, job.triggered_by) == (None, "system:tier_evaluation")
    assert job.counts["upgraded"] == 2


def test_one_failing_program_does_not_stop_the_others(make_program, earn, run_job, monkeypatch):
    from loyalty.services import expiry

    with time_machine.travel(datetime.fromisoformat("2025-01-01T10:00:00+00:00"), tick=False):
        broken, fine = make_program(name="broken"), make_program(name="fine")
        earn(broken, "u1", "100")
        earn(fine, "u1", "100")
    real = expiry._expire_program

    def expire(program, job, tracker):
        if program.pk == broken.pk:
            raise RuntimeError("disk on fire")
        real(program, job, tracker)

    monkeypatch.setattr(expiry, "_expire_program", expire)
    with time_machine.travel(datetime.fromisoformat("2026-01-02T00:00:00+00:00"), tick=False):
        job = run_job(Job.Kind.POINT_EXPIRY)

    assert job.status == Job.Status.FAILED
    assert "disk on fire" in job.error
    assert job.progress["failed"] == {str(broken.pk): "RuntimeError: disk on fire"}
    assert MemberBalance.objects.get(program=fine).points_balance == Decimal("0.00")
    assert MemberBalance.objects.get(program=broken).points_balance == Decimal("100.00")
    assert ledger_verify() == []


def test_redelivered_job_of_a_dead_worker_is_taken_over(program, earn):
    earn(program, "u1", "1500")
    with time_machine.travel(datetime.fromisoformat("2026-05-01T01:00:00+00:00"), tick=False):
        job = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, started_at=timezone.now())
        job_run(job_id=job.pk)  # a live run elsewhere: left alone
        job.refresh_from_db()
        assert job.status == Job.Status.RUNNING
    with time_machine.travel(datetime.fromisoformat("2026-05-01T03:00:00+00:00"), tick=False):
        job_run(job_id=job.pk)  # the broker redelivers it after the worker died
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert "resumed_at" in job.progress
    assert MemberBalance.objects.get(member_id="u1").tier == "silver"


def test_unreachable_broker_fails_the_job_instead_of_blocking_the_day(
    program, monkeypatch, django_capture_on_commit_callbacks
):
    from loyalty import tasks
    from loyalty.errors import QueueUnavailable
    from loyalty.services.jobs import job_enqueue

    def broker_down(*args, **kwargs):
        raise ConnectionRefusedError("redis is down")

    monkeypatch.setattr(tasks.job_run_task, "delay", broker_down)
    with pytest.raises(QueueUnavailable), django_capture_on_commit_callbacks(execute=True):
        job_enqueue(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)

    job = Job.objects.get()
    assert job.status == Job.Status.FAILED
    assert job.error == "not queued: redis is down"
    job_create(kind=Job.Kind.POINT_EXPIRY, program=program, actor=ACTOR)  # the day is free


def test_a_run_whose_job_was_failed_as_abandoned_meanwhile_stops_and_leaves_it_failed(
    make_program, monkeypatch
):
    """A worker alive but silent past the limit: the sweep fails its job (and a new run may
    start). Its next chunk must not commit, nor its end turn the job back to succeeded."""
    from django.db import transaction

    from loyalty.services import jobs as jobs_module

    program = make_program(name="P")
    written = []

    def slow_runner(*, job, tracker):
        with transaction.atomic():
            written.append(MemberBalance.objects.create(program=program, member_id="first").pk)
            tracker.save(done=1)
        # Meanwhile the sweep (or a new run's job_create) failed the job.
        Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED, error="abandoned: test")
        with transaction.atomic():
            written.append(MemberBalance.objects.create(program=program, member_id="second").pk)
            tracker.save(done=2)

    monkeypatch.setattr(jobs_module, "_runners", lambda: {Job.Kind.TIER_EVALUATION: slow_runner})
    job = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)
    ran = job_run(job_id=job.pk)
    assert (ran.status, ran.error) == (Job.Status.FAILED, "abandoned: test")
    assert ran.progress["done"] == 1  # the second chunk's progress never landed
    members = set(MemberBalance.objects.filter(program=program).values_list("member_id", flat=True))
    assert members == {"first"}  # ... nor its writes


def test_a_run_taken_over_by_another_worker_stops_at_its_next_chunk(make_program, monkeypatch):
    from django.db import transaction

    from loyalty.services import jobs as jobs_module

    program = make_program(name="P")

    def runner(*, job, tracker):
        tracker.save(done=1)
        # Another worker took the job over (a redelivery after a missed heartbeat).
        Job.objects.filter(pk=job.pk).update(progress={**tracker.progress, "attempt": 2})
        with transaction.atomic():
            MemberBalance.objects.create(program=program, member_id="late")
            tracker.save(done=2)

    monkeypatch.setattr(jobs_module, "_runners", lambda: {Job.Kind.TIER_EVALUATION: runner})
    job = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)
    ran = job_run(job_id=job.pk)
    assert ran.status == Job.Status.RUNNING  # the taker's to end
    assert ran.progress["attempt"] == 2
    assert not MemberBalance.objects.filter(member_id="late").exists()


def test_hold_expiry_job_expires_vouchers_past_their_date(program, earn, run_job, actor, api):
    earn(program, "u1", "500")
    voucher = hold(program, "100", actor, member_id="u1", capture=True).voucher
    later = hold(program, "100", actor, key="h2", member_id="u1", capture=True).voucher
    Voucher.objects.filter(pk=later.pk).update(expires_at=voucher.expires_at + timedelta(days=30))
    listed = f"/api/v1/vouchers?program_id={program.pk}&status="
    with time_machine.travel(voucher.expires_at + timedelta(seconds=1)):
        client = api("system", merchant_id=None)  # a token of that day
        # Past its date, before the sweep: shown expired, listed with the expired ones.
        assert client.get(f"/api/v1/vouchers/{voucher.code}").json()["status"] == "expired"
        assert [v["code"] for v in client.get(listed + "expired").json()["results"]] == [
            voucher.code
        ]
        assert [v["code"] for v in client.get(listed + "active").json()["results"]] == [later.code]
        job = run_job(Job.Kind.HOLD_EXPIRY)
        assert job.status == Job.Status.SUCCEEDED
        assert job.counts["vouchers_expired"] == 1
        voucher.refresh_from_db()
        assert voucher.status == Voucher.Status.EXPIRED
        later.refresh_from_db()
        assert later.status == Voucher.Status.ACTIVE
        expired = OutboxEvent.objects.get(event_type="loyalty.voucher.expired")
        assert expired.payload["voucher_id"] == str(voucher.pk)
        audited = AuditEntry.objects.filter(action="voucher.expire", entity_id=str(voucher.pk))
        assert audited.exists()
        redeem = client.post(f"/api/v1/vouchers/{voucher.code}/redeem")
        assert (redeem.status_code, redeem.json()["code"]) == (422, "voucher_not_redeemable")
        assert run_job(Job.Kind.HOLD_EXPIRY).counts["vouchers_expired"] == 0


def test_expiring_many_vouchers_costs_the_statements_of_one(program, earn, actor):
    """The sweep writes its vouchers' statuses, events and audit entries an insert each,
    however many vouchers: 1 or 6 cost the same statements."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from loyalty.services import vouchers_expire_due

    earn(program, "u1", "5000")
    codes = [
        hold(program, "10", actor, key=f"h{i}", member_id="u1", capture=True).voucher.code
        for i in range(7)
    ]
    past = timezone.now() - timedelta(seconds=1)
    counts = []
    for batch in (codes[:1], codes[1:]):
        Voucher.objects.filter(code__in=batch).update(expires_at=past)
        with CaptureQueriesContext(connection) as captured:
            assert vouchers_expire_due(actor=ACTOR) == len(batch)
        counts.append(len(captured.captured_queries))
    assert counts[0] == counts[1]
    assert OutboxEvent.objects.filter(event_type="loyalty.voucher.expired").count() == 7


def test_a_job_of_a_kind_with_no_runner_fails_at_once_rather_than_staying_running(program):
    job = job_create(kind=Job.Kind.CHURN_UPDATE, program=program, actor=ACTOR)
    job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED
    assert "no runner" in job.error


def test_approval_expiry_job_goes_on_past_one_chunk(program, run_job, monkeypatch):
    from approvals.models import ApprovalRequest
    from loyalty.services import jobs

    monkeypatch.setattr(jobs, "SWEEP_CHUNK", 3)
    past = timezone.now() - timedelta(hours=1)
    ApprovalRequest.objects.bulk_create(
        ApprovalRequest(
            operation="balance_adjustment", payload={}, program=program,
            merchant_id=program.merchant_id, target=f"t{i}", maker_id="x",
            maker_role="ops_marketing", required_roles=["finance_ops"], expires_at=past,
        )
        for i in range(7)
    )  # fmt: skip
    job = run_job(Job.Kind.APPROVAL_EXPIRY)
    assert job.status == Job.Status.SUCCEEDED
    assert job.counts["expired"] == 7
    assert not ApprovalRequest.objects.filter(status="pending").exists()


def test_hold_expiry_job_goes_on_when_a_due_hold_was_settled_meanwhile(
    program, earn, run_job, actor, monkeypatch
):
    from loyalty.services import jobs, redemptions

    monkeypatch.setattr(jobs, "SWEEP_CHUNK", 3)
    earn(program, "u1", "100")
    holds = [hold(program, "1", actor, member_id="u1", key=f"h{i}") for i in range(5)]
    real = redemptions.redemption_expire

    def released_just_before(*, redemption_id, actor):
        if redemption_id == holds[0].pk:  # the member's client releases it first
            redemptions.redemption_release(redemption_id=redemption_id, actor=actor)
        return real(redemption_id=redemption_id, actor=actor)

    monkeypatch.setattr(redemptions, "redemption_expire", released_just_before)
    with time_machine.travel(timezone.now() + timedelta(seconds=program.hold_ttl_seconds + 1)):
        job = run_job(Job.Kind.HOLD_EXPIRY)
    assert job.counts["expired"] == 4  # a first chunk of 2 expired (of 3) did not end it
    assert not Redemption.objects.filter(status=Redemption.Status.PENDING).exists()
    assert MemberBalance.objects.get(member_id="u1").locked == Decimal("0.00")
    assert ledger_verify() == []


def test_a_takeover_counts_each_member_evaluated_once(program, earn):
    """The job's counts tell what has committed: a takeover reviews every member again, and
    counts them once, not on top of the dead run's count."""
    for name in ("a", "b", "c"):
        earn(program, name, "10")
    with _at("2026-05-01T01:00:00+00:00"):
        job = job_create(kind=Job.Kind.TIER_EVALUATION, program=program, actor=ACTOR)
        job_run(job_id=job.pk)
        # Its worker died just before it recorded the end.
        Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING, finished_at=None)
    with _at("2026-05-01T03:00:00+00:00"):
        job_run(job_id=job.pk)  # redelivered: taken over

    job.refresh_from_db()
    assert (job.status, job.progress["attempt"]) == (Job.Status.SUCCEEDED, 2)
    assert job.counts["evaluated"] == 3


def test_a_failed_chunk_is_not_counted(make_program, earn, run_job, monkeypatch):
    """A job over every program: one program's chunk fails and rolls back; the job's counts
    are those of what committed, the other program's."""
    from loyalty.services import tiers

    first, second = make_program(name="first"), make_program(name="second")
    for program in (first, second):
        for name in ("a", "b"):
            earn(program, name, "1500")  # both move up to silver
    real = tiers._apply

    def fail_on_second(program, *args, **kwargs):
        if program.pk == second.pk:
            raise RuntimeError("database went away")
        return real(program, *args, **kwargs)

    monkeypatch.setattr(tiers, "_apply", fail_on_second)

    job = run_job(Job.Kind.TIER_EVALUATION)

    assert job.status == Job.Status.FAILED
    assert list(job.progress["failed"]) == [str(second.pk)]
    assert (job.counts["evaluated"], job.counts["upgraded"]) == (2, 2)
    assert set(MemberBalance.objects.values_list("program__name", "tier")) == {
        ("first", "silver"),
        ("second", "basic"),
    }
