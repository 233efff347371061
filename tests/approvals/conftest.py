"""People and helpers for the approval tests."""

from decimal import Decimal

import pytest

from approvals.services import approval_request_create
from loyalty.actors import Actor
from loyalty.services import event_ingest
from tests.api.conftest import (  # noqa: F401  (the API tests' fixtures, reused)
    api,
    funded,
    jwt_settings,
    make_token,
    own_program,
    public_pem,
    rsa_key,
)
from tests.factories import PointsEventFactory

OPS_MAKER = Actor(id="ops-maker", role="ops_marketing", ip="10.0.0.1")
OPS_2 = Actor(id="ops-2", role="ops_marketing")
FIN_1 = Actor(id="fin-1", role="finance_ops")
FIN_2 = Actor(id="fin-2", role="finance_ops")
AUDITOR = Actor(id="aud-1", role="auditor")
OPS = {"ops_marketing"}
FIN = {"finance_ops"}


@pytest.fixture
def member(program):
    """A member holding 15,000 points."""
    event_ingest(
        program=program,
        event=PointsEventFactory(member_id="u_1", points=Decimal("15000")),
        actor=OPS_2,
    )
    return "u_1"


@pytest.fixture
def adjustment(program, member):
    """Makes a pending balance adjustment request of `points` for the member."""

    def make(points="20000", maker=OPS_MAKER, key="adj-1"):
        return approval_request_create(
            operation="balance_adjustment",
            program=program,
            target=f"balance:{program.pk}:{member}",
            amount=Decimal(points),
            actor=maker,
            payload={
                "program_id": str(program.pk),
                "member_id": member,
                "points": points,
                "reason": "goodwill after outage",
                "idempotency_key": key,
            },
        )

    return make
