"""The console runs the services' own checks before it saves (a refusal is a form error, not
an error page, and files no approval request), audits a staff user's own password change,
and answers a NUL character in a URL with a 400."""

import json
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from approvals.models import ApprovalRequest
from audit.models import AuditEntry
from loyalty.models import Merchant, Program
from loyalty.services import program_update
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client(raise_request_exception=False)  # a crash answers 500, as in production
    client.force_login(user)
    return client


def refused_fields(response) -> set[str]:
    """The fields a re-displayed form names as wrong (a 200, not the error page)."""
    assert response.status_code == 200
    return set(response.context["adminform"].form.errors)


def _change_form(client, program) -> tuple[str, dict]:
    url = reverse("admin:loyalty_program_change", args=[program.pk])
    form = client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    if "sira_settings" in data:
        data["sira_settings"] = data["initial-sira_settings"] = json.dumps(data["sira_settings"])
    return url, data


def test_finance_budget_with_places_the_currency_lacks_is_a_form_error_not_a_500(program, actor):
    program_update(program_id=program.pk, changes={"budget_limit": Decimal("4000")}, actor=actor)
    client = _client(make_user("fin", "finance_ops"))
    url, data = _change_form(client, program)
    data["budget_limit"] = "4000.50"  # XOF has no minor unit: budget_limit_check refuses it
    assert refused_fields(client.post(url, data)) == {"budget_limit"}


def test_ops_invalid_sira_settings_is_a_form_error_not_a_500(program):
    client = _client(make_user("ops", "ops_marketing"))
    url, data = _change_form(client, program)
    data["sira_settings"] = json.dumps({"no_such_setting": 1})
    assert refused_fields(client.post(url, data)) == {"sira_settings"}


@pytest.mark.parametrize("settings", [["eats"], "x", 5])
def test_ops_sira_settings_that_are_not_an_object_are_a_form_error_not_a_500(program, settings):
    client = _client(make_user("ops", "ops_marketing"))
    url, data = _change_form(client, program)
    data["sira_settings"] = json.dumps(settings)
    assert refused_fields(client.post(url, data)) == {"sira_settings"}


def test_ops_tier_basis_the_tiers_do_not_fit_is_a_form_error_not_a_500(program):
    client = _client(make_user("ops", "ops_marketing"))
    url, data = _change_form(client, program)
    data["tier_basis"] = "spend"  # default tiers are all min_spend 0: refused by the service
    assert refused_fields(client.post(url, data)) == {"__all__"}  # the tiers: not in the form


def test_ops_program_create_with_invalid_sira_settings_is_a_form_error_not_a_500(program):
    Merchant.objects.create(id="m_1")
    client = _client(make_user("ops", "ops_marketing"))
    add = reverse("admin:loyalty_program_add")
    form = client.get(add).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k in form.fields}
    for name in ("expiry_rounding", "refund_policy", "tier_downgrade_policy"):
        data[name] = form.fields[name].choices[1][0]
    data.update({"merchant": "m_1", "name": "P", "currency": "XOF", "timezone": "UTC",
                 "earn_rate": "1", "point_value": "1", "tier_basis": "points",
                 "expiry_warning_days": "30", "tier_qualifying_days": "365",
                 "hold_ttl_seconds": "900", "voucher_validity_days": "90",
                 "sira_settings": json.dumps({"no_such_setting": 1})})  # fmt: skip
    assert refused_fields(client.post(add, data)) == {"sira_settings"}
    assert not Program.objects.filter(name="P").exists()


def test_console_budget_change_with_a_refused_companion_change_files_no_request(program):
    """The API calls program_update_check before the gate ("no approval request for changes
    the service would refuse"); the console files it, and the approvers' work then fails."""
    client = _client(make_user("root", superuser=True))  # holds budgets:write + programs:write
    url, data = _change_form(client, program)
    data.update({"budget_limit": "900000", "tier_basis": "spend"})
    client.post(url, data)
    assert not ApprovalRequest.objects.exists()


def test_own_password_change_in_the_admin_is_audited():
    user = make_user("auditor-1", "auditor", password="old-pw-123-x")
    client = _client(user)  # force_login writes the user.login entry
    response = client.post(reverse("admin:password_change"), {
        "old_password": "old-pw-123-x",
        "new_password1": "N3w-passw0rd-long!",
        "new_password2": "N3w-passw0rd-long!",
    })  # fmt: skip
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password("N3w-passw0rd-long!")
    assert AuditEntry.objects.filter(entity_type="user", entity_id=str(user.pk),
                                     action="user.password_change").exists()  # fmt: skip


@pytest.mark.parametrize(
    "url",
    [
        "/admin/loyalty/memberbalance/?tier=%00",
        "/admin/audit/auditentry/?entity_id=%00",
        "/admin/loyalty/merchant/%00/change/",
    ],
)
def test_nul_byte_in_admin_url_is_a_400(url):
    client = _client(make_user("fin", "finance_ops"))
    assert client.get(url).status_code == 400
