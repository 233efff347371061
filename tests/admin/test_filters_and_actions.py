"""A merchant admin's list filters offer only their own merchant's programs, and the console's
actions need the API permission the same operation needs (access.permissions)."""

from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.urls import reverse
from guardian.shortcuts import assign_perm

from loyalty.admin import ProgramListFilter
from loyalty.models import Redemption
from loyalty.services import event_ingest
from tests.conftest import hold, make_user
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db

# Every list with a "By program" filter (budget shards are not shown to merchant admins).
PROGRAM_FILTERED = ["memberbalance", "ledgerentry", "tier", "budgetshard"]
MERCHANT_ADMIN_LISTS = ["memberbalance", "ledgerentry", "tier"]


@pytest.fixture
def two_merchants(make_program, actor):
    own = make_program(merchant_id="m_own", name="Own Rewards")
    # A second program of theirs, so the filter shows (it hides with a single choice).
    make_program(merchant_id="m_own", name="Own Extra")
    rival = make_program(merchant_id="m_rival", name="Rival Secret Rewards")
    for program, member in [(own, "mine"), (rival, "theirs")]:
        event_ingest(program=program, event=PurchaseFactory(member_id=member), actor=actor)
    return own, rival


def test_every_program_filter_is_the_scoped_one():
    from django.contrib import admin

    from loyalty.models import BudgetShard, LedgerEntry, MemberBalance, Tier

    for model in (MemberBalance, LedgerEntry, Tier, BudgetShard):
        filters = admin.site.get_model_admin(model).list_filter
        assert ("program", ProgramListFilter) in filters, model.__name__
        assert "program" not in filters, model.__name__


@pytest.mark.parametrize("model", MERCHANT_ADMIN_LISTS)
def test_merchant_admin_filters_offer_only_their_programs(client, two_merchants, model):
    own, _ = two_merchants
    user = make_user("madmin", "merchant_admin")
    assign_perm("loyalty.view_merchant", user, own.merchant)
    client.force_login(user)
    response = client.get(reverse(f"admin:loyalty_{model}_changelist"))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Rival Secret Rewards" not in page
    choices = {
        str(title)
        for spec in response.context["cl"].filter_specs
        if isinstance(spec, ProgramListFilter)
        for _, title in spec.lookup_choices
    }
    assert choices == {"Own Rewards (XOF)", "Own Extra (XOF)"}
    assert "Own Extra" in page  # the filter is there, with their programs


@pytest.mark.parametrize("model", PROGRAM_FILTERED)
def test_platform_staff_filters_offer_every_program(client, two_merchants, model):
    client.force_login(make_user("ops", "ops_marketing"))
    page = client.get(reverse(f"admin:loyalty_{model}_changelist")).content.decode()
    assert "Own Rewards" in page
    assert "Rival Secret Rewards" in page


@pytest.fixture
def pending(program, actor):
    event_ingest(
        program=program,
        event=PurchaseFactory(member_id="u_1", amount=Decimal("100000")),
        actor=actor,
    )
    return hold(program, "100", actor)


def _release(client, redemption):
    return client.post(
        reverse("admin:loyalty_redemption_changelist"),
        {"action": "release", "_selected_action": [str(redemption.pk)]},
    )


@pytest.mark.parametrize(
    "role", ["finance_ops", "ops_marketing", "auditor", "merchant_admin", "system"]
)
def test_staff_roles_cannot_release_holds(client, pending, role):
    """Releasing a hold needs `redemptions:write`, which no staff role holds over the API
    (`system`, the workers' role, grants a person nothing in the console)."""
    user = make_user(f"{role}-user", role)
    if role == "merchant_admin":
        assign_perm("loyalty.view_merchant", user, pending.balance.program.merchant)
    client.force_login(user)
    page = client.get(reverse("admin:loyalty_redemption_changelist"))
    assert page.status_code == 200
    action_form = page.context["action_form"]  # None: no action at all
    assert action_form is None or "release" not in dict(action_form.fields["action"].choices)
    _release(client, pending)
    assert Redemption.objects.get(pk=pending.pk).status == Redemption.Status.PENDING


def test_a_superuser_releases_a_hold(client, pending, admin_user):
    client.force_login(admin_user)
    assert _release(client, pending).status_code == 302
    assert Redemption.objects.get(pk=pending.pk).status == Redemption.Status.CANCELLED


def test_a_voucher_past_its_date_is_listed_as_expired_before_the_sweep(
    client, program, actor, admin_user
):
    event_ingest(program=program, event=PurchaseFactory(member_id="u_1"), actor=actor)
    voucher = hold(program, "50", actor, capture=True).voucher
    client.force_login(admin_user)
    url = reverse("admin:loyalty_voucher_changelist")

    def listed(status):
        page = client.get(url, {"status": status})
        assert page.status_code == 200
        return [v.code for v in page.context["cl"].result_list]

    assert listed("active") == [voucher.code]
    with time_machine.travel(voucher.expires_at + timedelta(seconds=1)):
        client.force_login(admin_user)
        assert listed("active") == []
        assert listed("expired") == [voucher.code]
        assert b"Expired" in client.get(url).content
