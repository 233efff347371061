"""One end-to-end run through a real Celery worker process and the local Redis broker: a job
triggered over the API is picked up by the worker, run against the test database, and its
status read back over the API."""

import os
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection

from loyalty.models import Job, MemberBalance
from loyalty_project.celery import app as celery_app

# The Redis the run was given (CI exports REDIS_URL), else the local one.
BROKER = (
    os.environ.get("LOYALTY_TEST_BROKER_URL")
    or os.environ.get("REDIS_URL")
    or "redis://127.0.0.1:6379/3"
)
ROOT = Path(__file__).resolve().parents[2]


def _celery_reconfigure(**conf) -> None:
    """Applies `conf` to the app, dropping the broker pools and the queue/route tables it
    built from the previous configuration."""
    celery_app.close()
    celery_app.__dict__.pop("amqp", None)
    celery_app.conf.update(**conf)


def _database_url() -> str:
    db = connection.settings_dict
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def worker(monkeypatch):
    """A solo-pool worker on the test database; stopped and reaped whatever the test does."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis.from_url(BROKER).ping()
    except redis.exceptions.ConnectionError:
        pytest.skip(f"no Redis at {BROKER}")
    # A queue of this run's own: parallel test runs sharing the broker never take each
    # other's messages (each worker is bound to its own test database).
    queue = f"loyalty-test-{uuid.uuid4().hex}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "loyalty_project.settings.base",
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": BROKER,
        "CELERY_TASK_ALWAYS_EAGER": "false",
    }
    proc = subprocess.Popen(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "celery", "-A", "loyalty_project", "worker", "--pool=solo",
         "--without-gossip", "-Q", queue, "--without-mingle", "--loglevel=INFO"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    conf = {"task_always_eager": celery_app.conf.task_always_eager,
            "broker_url": celery_app.conf.broker_url,
            "task_default_queue": celery_app.conf.task_default_queue}  # fmt: skip
    # Celery prefers the CELERY_BROKER_URL environment variable over its configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", BROKER)
    _celery_reconfigure(task_always_eager=False, broker_url=BROKER, task_default_queue=queue)
    try:
        yield proc
    finally:
        _celery_reconfigure(**conf)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_worker_runs_a_job_triggered_over_the_api(make_program, earn, api, worker):
    program = make_program(merchant_id="m_own")
    earn(program, "u1", "1500")
    client = api("ops_marketing")

    queued = client.post("/api/v1/workers/tier-evaluation", {"program_id": str(program.pk)})
    assert queued.status_code == 202
    job_url = f"/api/v1/jobs/{queued.json()['job_id']}"

    deadline = time.monotonic() + 90
    body = client.get(job_url).json()
    while body["status"] in ("queued", "running") and time.monotonic() < deadline:
        if worker.poll() is not None:
            break
        time.sleep(0.5)
        body = client.get(job_url).json()
    if body["status"] != Job.Status.SUCCEEDED:
        worker.terminate()
        output = worker.communicate(timeout=20)[0]
        pytest.fail(f"job {body}\n--- worker output ---\n{output[-4000:]}")
    assert body["counts"]["upgraded"] == 1
    assert body["finished_at"] is not None
    balance = MemberBalance.objects.get(member_id="u1")
    assert (balance.tier, balance.points_balance) == ("silver", Decimal("1500.00"))
