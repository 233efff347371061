"""Helpers for the worker tests: earn points through the real ingestion service, run a job
the way beat or the API does (create the record, then run it), and read a member's state."""

from decimal import Decimal

import pytest

from loyalty.actors import system_actor
from loyalty.models import Job, MemberBalance
from loyalty.services import event_ingest
from loyalty.services.jobs import job_create, job_run

# The API tests' credentials (an RSA key standing in for Molam ID, tokens, a JSON client),
# for the jobs API tests.
from tests.api.conftest import (  # noqa: F401
    api,
    jwt_settings,
    make_token,
    public_pem,
    rsa_key,
)
from tests.factories import PointsEventFactory, PurchaseFactory


@pytest.fixture
def earn(actor):
    """Credits `points` to a member with a referral event (a lot that expires by the program)."""

    def do(program, member_id: str, points: str | Decimal):
        event = PointsEventFactory(member_id=member_id, points=Decimal(str(points)))
        return event_ingest(program=program, event=event, actor=actor)

    return do


@pytest.fixture
def buy(actor):
    def do(program, member_id: str, amount: str | Decimal):
        event = PurchaseFactory(
            member_id=member_id, amount=Decimal(str(amount)), currency=program.currency
        )
        return event_ingest(program=program, event=event, actor=actor)

    return do


@pytest.fixture
def run_job():
    def do(kind: str, program=None) -> Job:
        job = job_create(kind=kind, program=program, actor=system_actor("test"))
        job = job_run(job_id=job.pk)
        job.refresh_from_db()
        return job

    return do


def member(program, member_id: str) -> MemberBalance:
    return MemberBalance.objects.get(program=program, member_id=member_id)
