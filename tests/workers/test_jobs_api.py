"""The workers over the API: manual triggers answer 202 with a job id (run in-process in
tests), job status, refusals (roles, scope, overlap), and tier rollback."""

from decimal import Decimal

import pytest

from audit.models import AuditEntry
from loyalty.models import Job, TierSnapshot
from tests.api.conftest import OTHER, OWN
from tests.workers.conftest import member

pytestmark = pytest.mark.django_db


@pytest.fixture
def own(make_program):
    return make_program(merchant_id=OWN)


def test_trigger_runs_the_job_and_status_reports_it(
    api, own, earn, django_capture_on_commit_callbacks
):
    earn(own, "u1", "1500")
    client = api("ops_marketing")

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/workers/tier-evaluation", {"program_id": str(own.pk)})

    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    job_id = response.json()["job_id"]
    status = client.get(f"/api/v1/jobs/{job_id}")
    assert status.status_code == 200
    body = status.json()
    assert (body["kind"], body["status"]) == ("tier_evaluation", "succeeded")
    assert body["counts"]["upgraded"] == 1
    assert body["program_id"] == str(own.pk)
    assert body["triggered_by"] == "user-1"
    assert body["started_at"] is not None
    assert body["finished_at"] is not None
    assert member(own, "u1").tier == "silver"


@pytest.mark.parametrize("kind", ["point-expiry", "campaign-execution"])
def test_other_triggers(api, own, kind, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = api("system").post(f"/api/v1/workers/{kind}", {"program_id": str(own.pk)})
    assert response.status_code == 202
    job = Job.objects.get(pk=response.json()["job_id"])
    assert job.kind == kind.replace("-", "_")
    assert job.status == Job.Status.SUCCEEDED


def test_overlapping_run_is_409(api, own):
    client = api("ops_marketing")
    # Without running the on-commit hook the first job stays queued.
    first = client.post("/api/v1/workers/point-expiry", {"program_id": str(own.pk)})
    second = client.post("/api/v1/workers/point-expiry", {"program_id": str(own.pk)})

    assert first.status_code == 202
    assert second.status_code == 409
    assert second.json()["code"] == "job_already_running"
    assert Job.objects.count() == 1


def test_roles_and_scope(api, own, make_program):
    other = make_program(merchant_id=OTHER, name="Other")
    assert (
        api("merchant_admin")
        .post("/api/v1/workers/tier-evaluation", {"program_id": str(own.pk)})
        .status_code
        == 403
    )
    assert api("auditor").post("/api/v1/workers/point-expiry", {}).status_code == 403
    scoped = api("ops_marketing")
    assert (
        scoped.post("/api/v1/workers/tier-evaluation", {"program_id": str(other.pk)}).status_code
        == 404
    )
    assert scoped.post("/api/v1/workers/tier-evaluation", {}).status_code == 400
    assert Job.objects.count() == 0

    platform = api("ops_marketing", merchant_id=None)
    queued = platform.post("/api/v1/workers/tier-evaluation", {})
    assert queued.status_code == 202
    job_id = queued.json()["job_id"]
    # A job over every program is not visible to a merchant-scoped caller.
    assert api("ops_marketing").get(f"/api/v1/jobs/{job_id}").status_code == 404
    assert api("auditor", merchant_id=None).get(f"/api/v1/jobs/{job_id}").status_code == 200


def test_tier_rollback_api(api, own, earn, run_job):
    earn(own, "u1", "1500")
    run_job(Job.Kind.TIER_EVALUATION, own)
    snapshot = TierSnapshot.objects.get()
    url = f"/api/v1/tier-snapshots/{snapshot.pk}/rollback"

    assert api("merchant_admin").post(url, {"reason": "x"}).status_code == 403
    assert api("ops_marketing", merchant_id=OTHER).post(url, {}).status_code == 404
    response = api("finance_ops").post(url, {"reason": "fraudulent points"})

    assert response.status_code == 201
    body = response.json()
    assert (body["from_tier"], body["to_tier"]) == ("silver", "basic")
    assert body["rollback_of"] == str(snapshot.pk)
    assert member(own, "u1").tier == "basic"
    assert AuditEntry.objects.filter(action="balance.tier_rollback").count() == 1
    again = api("finance_ops").post(url, {})
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_state"
    assert member(own, "u1").points_balance == Decimal("1500.00")


@pytest.mark.django_db(transaction=True)
def test_a_trigger_with_the_queue_unreachable_is_a_503_and_leaves_the_day_free(
    api, own, monkeypatch
):
    """The broker refusing the task (kombu's error, as when Redis is down) is answered 503
    `queue_unavailable`, not 500; the job is failed, so a retry may start another."""
    from kombu.exceptions import OperationalError

    from loyalty.tasks import job_run_task

    def unreachable(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(job_run_task, "delay", unreachable)
    client = api("ops_marketing")
    response = client.post("/api/v1/workers/point-expiry", {"program_id": str(own.pk)})
    assert (response.status_code, response.json()["code"]) == (503, "queue_unavailable")
    job = Job.objects.get(kind="point_expiry")
    assert job.status == Job.Status.FAILED
    assert job.error.startswith("not queued")
    monkeypatch.undo()
    retry = client.post("/api/v1/workers/point-expiry", {"program_id": str(own.pk)})
    assert retry.status_code == 202
