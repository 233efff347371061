"""The ops console: every role can open what it may see, nothing the engine wrote is editable,
merchant admins see only their merchant, and admin writes go through audited services."""

import json
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


def _program_form(client, program) -> tuple[str, dict]:
    """The program's change form as its page posts it back (read-only fields are not in it)."""
    url = reverse("admin:loyalty_program_change", args=[program.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    if "sira_settings" in data:
        data["sira_settings"] = json.dumps(data["sira_settings"])
    for name, field in form.fields.items():
        if field.show_hidden_initial and name in data:
            # A callable default: the page posts the field's initial value too, hidden.
            data[f"initial-{name}"] = data[name]
    return url, data


def test_finance_updates_a_program_budget_through_the_service(client, staff, history, actor):
    """The budget is finance's (`budgets:write`, as over the API)."""
    program = Program.objects.get()
    # Adding a limit waits for approval (tests/approvals); a change within the threshold runs.
    program_update(program_id=program.pk, changes={"budget_limit": Decimal("4000")}, actor=actor)
    client.force_login(staff("finance_ops"))
    url, data = _program_form(client, program)
    assert set(data) == {"budget_limit"}  # finance changes nothing else of a program
    data["budget_limit"] = "5000"
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    program.refresh_from_db()
    assert program.budget_limit == Decimal("5000")
    shards = list(program.budget_shards.all())
    assert sum(s.allocated for s in shards) == Decimal("5000")  # the limit, spread over shards
    assert sum(s.spent for s in shards) == Decimal("200")  # what was already awarded
    entry = AuditEntry.objects.filter(action="program.update", entity_id=str(program.pk)).last()
    assert entry.actor_role == "finance_ops"


def test_ops_cannot_change_a_program_budget(client, staff, history, actor):
    """Ops edits the program but not its budget (`budgets:write` is finance's)."""
    program = Program.objects.get()
    program_update(program_id=program.pk, changes={"budget_limit": Decimal("4000")}, actor=actor)
    client.force_login(staff("ops_marketing"))
    url, data = _program_form(client, program)
    assert "budget_limit" not in data  # shown read-only
    assert "earn_rate" in data
    audits = AuditEntry.objects.count()
    data["budget_limit"] = "9000"  # posted anyway: ignored
    response = client.post(url, data)
    assert response.status_code == 302
    program.refresh_from_db()
    assert program.budget_limit == Decimal("4000")
    assert AuditEntry.objects.count() == audits  # nothing changed, nothing recorded
    data["earn_rate"] = "0.05"  # what ops may change still saves
    assert client.post(url, data).status_code == 302
    program.refresh_from_db()
    assert (program.earn_rate, program.budget_limit) == (Decimal("0.05"), Decimal("4000"))


def test_finance_cannot_change_a_program_earn_rate(client, staff, history):
    """Program fields need `programs:write` (ops), as over the API."""
    program = Program.objects.get()
    client.force_login(staff("finance_ops"))
    url, data = _program_form(client, program)
    data.update({"earn_rate": "0.50", "name": "Renamed by finance", "expiry_days": "1"})
    response = client.post(url, data)
    assert response.status_code == 302
    program.refresh_from_db()
    assert (program.earn_rate, program.name, program.expiry_days) == (
        Decimal("0.02"), "Test Rewards", 365,
    )  # fmt: skip
    assert not AuditEntry.objects.filter(action="program.update").exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expiry_days", "4000000"),  # a lot's expiry past the calendar: every purchase failed
        ("voucher_validity_days", "3000000"),  # every capture failed
        ("tier_qualifying_days", "3000000"),  # the tier job failed
        ("hold_ttl_seconds", "0"),  # every hold expired at once
        ("expiry_warning_days", "4000000"),
    ],
)
def test_the_console_bounds_a_programs_durations_as_the_api_does(
    client, staff, history, actor, field, value
):
    program = Program.objects.get()
    before = getattr(program, field)
    client.force_login(staff("ops_marketing"))
    url, data = _program_form(client, program)
    data[field] = value

    response = client.post(url, data)

    assert response.status_code == 200  # the form again, with the error
    assert field in response.context["adminform"].form.errors
    program.refresh_from_db()
    assert getattr(program, field) == before
    event_ingest(program=program, event=PurchaseFactory(member_id="u_9"), actor=actor)


def test_program_save_refuses_a_field_the_role_may_not_change(rf, staff, history):
    """Behind the read-only fields, the save refuses too (a form that let one through)."""
    from django.core.exceptions import PermissionDenied

    from loyalty.admin import ProgramAdmin

    program = Program.objects.get()
    request = rf.post("/")
    request.user = staff("ops_marketing")
    model_admin = ProgramAdmin(Program, admin.site)

    class Form:
        changed_data = ["budget_limit"]
        cleaned_data = {"budget_limit": Decimal("9000")}

    with pytest.raises(PermissionDenied):
        model_admin.save_model(request, program, Form(), change=True)
    program.refresh_from_db()
    assert program.budget_limit is None


@pytest.mark.parametrize(
    ("role", "may_add"),
    [("ops_marketing", True), ("finance_ops", False), ("merchant_admin", False)],
)
def test_only_ops_creates_programs(client, staff, role, may_add):
    client.force_login(staff(role))
    response = client.get(reverse("admin:loyalty_program_add"))
    assert (response.status_code == 200) is may_add


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
