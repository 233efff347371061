"""POST /events, the hottest write: its statements, and what the shortcuts must not change
(scope, a suspension taking effect at once, a release when nothing happened)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from access.models import IdempotencyRecord
from loyalty.models import LedgerEntry
from loyalty.services.programs import program_set_status

from .conftest import OTHER, OWN

pytestmark = pytest.mark.django_db


def purchase(program, member="u_1"):
    return {"program_id": str(program.pk), "member_id": member, "type": "purchase",
            "amount": "5000", "currency": "XOF"}  # fmt: skip


@pytest.mark.postgres  # SQLite takes the two-statement claim and the ORM paths
def test_a_purchase_takes_four_statements(api, make_program):
    """The claim (which reads the program too), the balance lock, the write, and the stored
    answer in the write's transaction."""
    program = make_program(merchant_id=OWN)
    client = api("system")
    assert client.post("/api/v1/events", purchase(program)).status_code == 201
    with CaptureQueriesContext(connection) as queries:
        response = client.post("/api/v1/events", purchase(program))
    assert response.status_code == 201
    statements = [q["sql"] for q in queries.captured_queries]
    # Less the savepoints that stand for transactions inside the test's own.
    statements = [s for s in statements if "SAVEPOINT" not in s]
    assert len(statements) == 4, statements
    assert "loyalty_program" in statements[0]


def test_another_merchants_program_is_404_and_the_key_released(api, make_program):
    theirs = make_program(merchant_id=OTHER)
    response = api("system", merchant_id=OWN).post("/api/v1/events", purchase(theirs), key="k404")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert not LedgerEntry.objects.filter(program=theirs).exists()
    assert not IdempotencyRecord.objects.filter(key="k404").exists()


def test_a_suspension_takes_effect_on_the_next_event(api, make_program, actor):
    program = make_program(merchant_id=OWN)
    client = api("system")
    assert client.post("/api/v1/events", purchase(program)).status_code == 201
    program_set_status(program_id=program.pk, status="suspended", actor=actor)
    response = client.post("/api/v1/events", purchase(program, member="u_2"))
    assert response.json()["code"] == "program_inactive"
    assert not LedgerEntry.objects.filter(program=program, details__member_id="u_2").exists()
