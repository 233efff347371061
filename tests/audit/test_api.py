"""GET /api/v1/audit and /api/v1/audit/{entity_type}/{entity_id}: who may read what."""

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone

from audit.services import audit_record
from loyalty.actors import Actor
from tests.api.conftest import OTHER, OWN

pytestmark = pytest.mark.django_db


def entry(merchant_id, entity_id="p1", action="program.update", actor_id="ops-1"):
    return audit_record(
        actor=Actor(id=actor_id, role="ops_marketing"), action=action, entity_type="program",
        entity_id=entity_id, merchant_id=merchant_id, after={"name": "x"},
    )  # fmt: skip


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [e["id"] for e in response.json()["results"]]


def test_entity_trail_newest_first_with_cursor_pages(api):
    made = [entry(OWN) for _ in range(3)]
    entry(OWN, entity_id="p2")
    client = api("auditor", merchant_id=None)
    first = client.get("/api/v1/audit/program/p1", {"limit": 2})
    assert ids(first) == [str(made[2].pk), str(made[1].pk)]
    nxt = first.json()["next"]
    assert ids(client.get(nxt)) == [str(made[0].pk)]
    body = first.json()["results"][0]
    assert (body["entity_type"], body["action"], body["actor_id"]) == (
        "program", "program.update", "ops-1",
    )  # fmt: skip


def test_search_filters_by_actor_action_entity_type_and_time(api):
    with time_machine.travel(timezone.now() - timedelta(days=2)):
        old = entry(OWN, actor_id="fin-1")
    new = entry(OWN, actor_id="fin-1", action="program.create")
    entry(OWN, actor_id="ops-9")
    client = api("finance_ops", merchant_id=None)
    assert ids(client.get("/api/v1/audit", {"actor_id": "fin-1"})) == [str(new.pk), str(old.pk)]
    assert ids(client.get("/api/v1/audit", {"action": "program.create"})) == [str(new.pk)]
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(client.get("/api/v1/audit", {"actor_id": "fin-1", "since": since})) == [str(new.pk)]
    assert ids(client.get("/api/v1/audit", {"actor_id": "fin-1", "until": since})) == [str(old.pk)]
    assert client.get("/api/v1/audit", {"entity_type": "nope"}).status_code == 400
    assert client.get("/api/v1/audit", {"since": "2026-11-27T10:00:00"}).status_code == 400


def test_merchant_scoped_callers_see_only_their_merchant(api):
    own, other = entry(OWN), entry(OTHER, entity_id="p9")
    audit_record(actor=Actor(id="user:1", role="auditor"), action="user.login",
                 entity_type="user", entity_id=1)  # fmt: skip
    scoped = api("auditor", merchant_id=OWN)
    assert ids(scoped.get("/api/v1/audit")) == [str(own.pk)]
    assert scoped.get("/api/v1/audit/program/p9").status_code == 404
    assert len(ids(api("auditor", merchant_id=None).get("/api/v1/audit"))) == 3
    assert ids(api("finance_ops", merchant_id=None).get("/api/v1/audit/program/p9")) == [
        str(other.pk)
    ]


def test_roles_without_audit_read_are_refused(api):
    entry(OWN)
    for role in ("ops_marketing", "merchant_admin"):
        assert api(role).get("/api/v1/audit").status_code == 403
    assert api(None).get("/api/v1/audit").status_code == 401


def test_every_entity_type_the_code_writes_can_be_searched():
    """An entity type missing from ENTITY_TYPES answers 400 on both lookups: its entries
    could only be found by action or actor. Read from the source, so a new writer cannot be
    missed."""
    import re
    from pathlib import Path

    from audit.selectors import ENTITY_TYPES

    root = Path(__file__).resolve().parents[2]
    written = {
        found
        for app in ("access", "approvals", "audit", "loyalty", "sira")
        for source in (root / app).rglob("*.py")
        for found in re.findall(r'entity_type="([a-z_]+)"', source.read_text())
    }
    assert written, "no writer found: the pattern no longer matches the code"
    assert written <= set(ENTITY_TYPES), written - set(ENTITY_TYPES)


def test_staff_identity_entries_are_found_by_entity(api):
    audit_record(
        actor=Actor(id="admin-1", role="platform_admin"), action="staff_identity.link",
        entity_type="staff_identity", entity_id=7, after={"molam_subject": "s-7"},
    )  # fmt: skip
    client = api("auditor", merchant_id=None)
    assert len(ids(client.get("/api/v1/audit/staff_identity/7"))) == 1
    assert len(ids(client.get("/api/v1/audit", {"entity_type": "staff_identity"}))) == 1


@pytest.mark.parametrize("entity_id", ["%00", "p" * 65])
def test_an_entity_id_no_entry_can_carry_is_an_unknown_entity(api, entity_id):
    """A NUL or an id longer than the column: 404 as for any unknown entity, not a value the
    database refuses."""
    entry(OWN)
    response = api("auditor", merchant_id=None).get(f"/api/v1/audit/program/{entity_id}")
    assert (response.status_code, response.json()["code"]) == (404, "not_found")
