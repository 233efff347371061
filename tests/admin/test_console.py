"""The ops console: every role can open what it may see, nothing the engine wrote is editable,
merchant admins see only their merchant, and admin writes go through audited services."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.apps import apps
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from access.models import IdempotencyRecord
from audit.models import AuditEntry
from loyalty.models import LedgerEntry, MemberBalance, Program
from loyalty.roles import ROLES
from loyalty.services import event_ingest, program_update
from tests.conftest import make_user
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db):
    return lambda role: make_user(f"{role}-user", role)


@pytest.fixture
def history(program, actor):
    event_ingest(program=program, event=PurchaseFactory(member_id="u1"), actor=actor)
    return program


def test_every_loyalty_model_is_registered():
    for model in apps.get_app_config("loyalty").get_models():
        assert admin.site.is_registered(model), model.__name__


@pytest.mark.parametrize("role", ROLES)
def test_each_role_opens_the_member_and_ledger_lists(client, staff, history, role):
    client.force_login(staff(role))
    for model in (MemberBalance, LedgerEntry):
        url = reverse(f"admin:loyalty_{model._meta.model_name}_changelist")
        assert client.get(url).status_code == 200


def test_ledger_entries_are_read_only_even_for_superusers(client, history, admin_user):
    client.force_login(admin_user)
    entry = LedgerEntry.objects.get()
    url = reverse("admin:loyalty_ledgerentry_change", args=[entry.pk])
    response = client.post(url, {"points": "999999", "reason": "edited"})
    assert response.status_code == 403
    assert client.get(reverse("admin:loyalty_ledgerentry_add")).status_code == 403
    assert client.post(reverse("admin:loyalty_ledgerentry_delete", args=[entry.pk]),
                       {"post": "yes"}).status_code == 403  # fmt: skip
    entry.refresh_from_db()
    assert entry.points == Decimal("200.00")


def test_merchant_admin_sees_only_own_merchant(client, staff, make_program, actor):
    own = make_program(merchant_id="m_own", name="Own")
    other = make_program(merchant_id="m_other", name="Other")
    event_ingest(program=own, event=PurchaseFactory(member_id="mine"), actor=actor)
    event_ingest(program=other, event=PurchaseFactory(member_id="theirs"), actor=actor)
    user = staff("merchant_admin")
    assign_perm("loyalty.view_merchant", user, own.merchant)
    client.force_login(user)
    page = client.get(reverse("admin:loyalty_memberbalance_changelist")).content.decode()
    assert "mine" in page
    assert "theirs" not in page
    other_url = reverse("admin:loyalty_program_change", args=[other.pk])
    assert client.get(other_url).status_code == 302  # unknown to this user: back to the index


def test_finance_freezes_a_member_through_the_audited_service(client, staff, history):
    client.force_login(staff("finance_ops"))
    balance = MemberBalance.objects.get(member_id="u1")
    response = client.post(
        reverse("admin:loyalty_memberbalance_changelist"),
        {"action": "freeze", "_selected_action": [balance.pk]},
    )
    assert response.status_code == 302
    balance.refresh_from_db()
    assert balance.is_frozen
    entry = AuditEntry.objects.get(action="balance.freeze")
    assert entry.actor_role == "finance_ops"


def test_auditor_cannot_freeze(client, staff, history):
    client.force_login(staff("auditor"))
    balance = MemberBalance.objects.get(member_id="u1")
    client.post(
        reverse("admin:loyalty_memberbalance_changelist"),
        {"action": "freeze", "_selected_action": [balance.pk]},
    )
    balance.refresh_from_db()
    assert not balance.is_frozen


def test_ops_updates_a_program_budget_through_the_service(client, staff, history, actor):
    program = Program.objects.get()
    # Adding a limit waits for approval (tests/approvals); a change within the threshold runs.
    program_update(program_id=program.pk, changes={"budget_limit": Decimal("4000")}, actor=actor)
    client.force_login(staff("ops_marketing"))
    url = reverse("admin:loyalty_program_change", args=[program.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k != "sira_settings"}
    data.update({"budget_limit": "5000", "sira_settings": "{}", "name": program.name})
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    program.refresh_from_db()
    assert program.budget_limit == Decimal("5000")
    shards = list(program.budget_shards.all())
    assert sum(s.allocated for s in shards) == Decimal("5000")  # the limit, spread over shards
    assert sum(s.spent for s in shards) == Decimal("200")  # what was already awarded
    assert AuditEntry.objects.filter(action="program.update", entity_id=str(program.pk)).exists()


def test_a_stored_answer_shows_as_indented_json(client, admin_user):
    """Kept as the compact bytes sent; the console shows them readably, never editable."""
    now = timezone.now()
    record = IdempotencyRecord.objects.create(
        scope="m_1", key="k1", method="POST", path="/api/v1/events", request_hash="h",
        status="completed", response_status=201, response_bytes='{"member_id":"<é>"}'.encode(),
        created_at=now, locked_until=now, completed_at=now, expires_at=now + timedelta(days=2),
    )  # fmt: skip
    client.force_login(admin_user)
    page = client.get(reverse("admin:access_idempotencyrecord_change", args=[record.pk]))
    assert page.status_code == 200
    shown = "<pre>{\n  &quot;member_id&quot;: &quot;&lt;é&gt;&quot;\n}</pre>"
    assert shown in page.content.decode()
