"""Campaigns that could never run as asked are refused, a closed program's campaigns can be
cancelled, ops stop a campaign from the console, and a voucher's code (a bearer secret) is
never shown or kept whole outside the voucher itself."""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from audit.models import AuditEntry
from loyalty.models import Campaign, LedgerEntry, Program
from loyalty.services import program_set_status
from loyalty.services.campaigns_admin import campaign_create
from loyalty.services.programs import TierInput
from tests.conftest import make_user

from .conftest import OWN
from .test_programs_campaigns import campaign_body

pytestmark = pytest.mark.django_db


def _scheduled(program, actor, name: str) -> Campaign:
    return campaign_create(
        program=program, name=name, segment="all", bonus_points=Decimal("10"),
        scheduled_at=timezone.now() + timedelta(hours=1), actor=actor,
    )  # fmt: skip


def test_a_tier_segment_of_a_tier_the_program_does_not_have_is_refused(api, make_program):
    program = make_program(
        merchant_id=OWN, tiers=[TierInput("bronze"), TierInput("argent", min_points=Decimal(1))]
    )
    client = api("ops_marketing")

    refused = client.post("/api/v1/campaigns", campaign_body(program, segment="tier_gold"))

    assert refused.status_code == 400
    assert "segment" in refused.json()["errors"]
    assert not Campaign.objects.exists()


def test_a_campaign_scheduled_in_the_past_is_refused_the_present_is_taken(api, own_program):
    client = api("ops_marketing")
    ten_years_ago = (timezone.now() - timedelta(days=3650)).isoformat()

    def create(**fields):
        return client.post("/api/v1/campaigns", campaign_body(own_program, **fields))

    refused = create(scheduled_at=ten_years_ago)
    now = create(scheduled_at=timezone.now().isoformat())
    draft = create(scheduled_at=ten_years_ago, status="draft")
    late = client.patch(f"/api/v1/campaigns/{draft.json()['id']}", {"status": "scheduled"})

    assert refused.status_code == 400
    assert "scheduled_at" in refused.json()["errors"]
    assert now.status_code == draft.status_code == 201
    assert late.status_code == 400
    assert Campaign.objects.get(pk=draft.json()["id"]).status == Campaign.Status.DRAFT


def test_a_closed_programs_scheduled_campaign_is_cancelled_not_left_scheduled(
    api, client, own_program, actor
):
    """A closed program's campaigns never run; cancelling is what is left (over the API or in
    the console), and nothing else may change."""
    over_api = _scheduled(own_program, actor, "api")
    in_console = _scheduled(own_program, actor, "console")
    program_set_status(program_id=own_program.pk, status=Program.Status.CLOSED, actor=actor)
    ops = api("ops_marketing")

    renamed = ops.patch(f"/api/v1/campaigns/{over_api.pk}", {"name": "x", "status": "cancelled"})
    cancelled = ops.patch(f"/api/v1/campaigns/{over_api.pk}", {"status": "cancelled"})
    client.force_login(make_user("ops", "ops_marketing"))
    client.post(reverse("admin:loyalty_campaign_changelist"),
                {"action": "cancel", "_selected_action": [str(in_console.pk)]})  # fmt: skip

    assert (renamed.status_code, renamed.json()["code"]) == (422, "program_inactive")
    assert cancelled.status_code == 200, cancelled.json()
    assert set(Campaign.objects.values_list("name", "status")) == {
        ("api", "cancelled"), ("console", "cancelled")
    }  # fmt: skip


def test_ops_cancel_a_scheduled_campaign_from_the_console(client, own_program, actor):
    campaign = _scheduled(own_program, actor, "oops")
    client.force_login(make_user("ops", "ops_marketing"))

    cancel = {"action": "cancel", "_selected_action": [str(campaign.pk)]}
    response = client.post(reverse("admin:loyalty_campaign_changelist"), cancel)

    assert response.status_code == 302
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.CANCELLED
    assert AuditEntry.objects.filter(action="campaign.update").exists()


def test_finance_may_not_cancel_a_campaign_in_the_console(client, own_program, actor):
    campaign = _scheduled(own_program, actor, "c")
    client.force_login(make_user("fin", "finance_ops"))
    client.post(reverse("admin:loyalty_campaign_changelist"),
                {"action": "cancel", "_selected_action": [str(campaign.pk)]})  # fmt: skip
    assert Campaign.objects.get(pk=campaign.pk).status == Campaign.Status.SCHEDULED


def test_the_console_never_shows_a_voucher_code_whole(client, active_voucher):
    client.force_login(make_user("aud", "auditor"))
    listed = client.get(reverse("admin:loyalty_voucher_changelist"))
    found = client.get(reverse("admin:loyalty_voucher_changelist"), {"q": active_voucher.code})
    detail = client.get(reverse("admin:loyalty_voucher_change", args=[active_voucher.pk]))

    for page in (listed, detail):
        assert page.status_code == 200
        assert active_voucher.code not in page.content.decode()
        assert f"…{active_voucher.code[-4:]}" in page.content.decode()
    # A whole code searched for (what a customer reads out) finds its voucher; part of one
    # finds none (it would tell the rest, a character at a time).
    assert list(found.context["cl"].result_list) == [active_voucher]
    partial = client.get(reverse("admin:loyalty_voucher_changelist"),
                         {"q": active_voucher.code[:-1]})  # fmt: skip
    assert list(partial.context["cl"].result_list) == []


def test_the_ledger_keeps_the_voucher_not_its_code(active_voucher):
    entry = LedgerEntry.objects.get(type=LedgerEntry.Type.REDEMPTION)
    assert active_voucher.code not in str(entry.details)
    assert (entry.details["voucher_id"], entry.details["voucher_code_last4"]) == (
        str(active_voucher.pk), active_voucher.code[-4:]
    )  # fmt: skip


@pytest.mark.django_db(transaction=True)  # the ledger's triggers are switched off, committed
def test_a_capture_written_before_keeps_its_code_out_of_the_console(client, active_voucher):
    entry = LedgerEntry.objects.get(type=LedgerEntry.Type.REDEMPTION)
    legacy = {**entry.details, "voucher_code": active_voucher.code}
    del legacy["voucher_id"], legacy["voucher_code_last4"]
    with connection.cursor() as cursor:  # as captures were written (the ledger's owner only)
        postgres = connection.vendor == "postgresql"
        if postgres:
            cursor.execute("ALTER TABLE loyalty_ledgerentry DISABLE TRIGGER USER")
        try:
            LedgerEntry.objects.filter(pk=entry.pk).update(details=legacy)
        finally:
            if postgres:
                cursor.execute("ALTER TABLE loyalty_ledgerentry ENABLE TRIGGER USER")
    client.force_login(make_user("aud", "auditor"))

    page = client.get(reverse("admin:loyalty_ledgerentry_change", args=[entry.pk]))

    assert page.status_code == 200
    assert active_voucher.code not in page.content.decode()
    assert active_voucher.code[-4:] in page.content.decode()
