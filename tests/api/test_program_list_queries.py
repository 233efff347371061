"""GET /programs reads every program's spent budget in the list's own query: a page of many
programs costs the same number of queries as a page of one."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from loyalty.models import Program
from loyalty.services.budget import budget_spent
from tests.api.conftest import OWN

pytestmark = pytest.mark.django_db


def list_queries(client) -> tuple[int, list]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/api/v1/programs")
    assert response.status_code == 200, response.content
    return len(captured), response.json()["results"]


def test_program_list_queries_do_not_grow_with_programs(api, make_program):
    client = api("merchant_admin")
    make_program(merchant_id=OWN, name="one")
    one, _ = list_queries(client)
    for n in range(5):
        make_program(merchant_id=OWN, name=f"more {n}")
    six, results = list_queries(client)
    assert len(results) == 6
    assert six == one
    for body in results:  # the same figure as the one-program read
        assert body["budget_spent"] == str(budget_spent(program=Program.objects.get(pk=body["id"])))
