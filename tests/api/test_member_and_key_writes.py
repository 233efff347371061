"""Writes that must refuse cleanly or do nothing twice: a merchant id a key cannot be made
for, a campaign of a closed program, a freeze of a member already frozen."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from access.models import MerchantAPIKey
from approvals.models import ApprovalRequest
from audit.models import AuditEntry
from loyalty.models import Campaign, MemberBalance, Merchant, Program

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "merchant",
    ["", "   ", "m" * 65, "m 1/é", "m_123 ", " m_123"],  # a typo would be a merchant of its own
)
def test_apikey_create_refuses_a_merchant_id_it_cannot_make(merchant):
    with pytest.raises(CommandError):
        call_command(
            "apikey_create", "--merchant", merchant, "--name", "pos",
            stdout=StringIO(), stderr=StringIO(),
        )  # fmt: skip
    assert not Merchant.objects.filter(id=merchant).exists()
    assert not MerchantAPIKey.objects.exists()


def test_apikey_create_still_serves_a_merchant_made_before_the_rule():
    Merchant.objects.create(id="legacy merchant")
    call_command("apikey_create", "--merchant", "legacy merchant", "--name", "pos",
                 stdout=StringIO(), stderr=StringIO())  # fmt: skip
    assert MerchantAPIKey.objects.get().merchant_id == "legacy merchant"


def test_a_new_program_takes_the_deployments_hold_and_voucher_defaults(api, settings):
    settings.LOYALTY_HOLD_TTL_SECONDS, settings.LOYALTY_VOUCHER_VALIDITY_DAYS = 60, 7
    created = api("ops_marketing").post("/api/v1/programs", {
        "name": "Defaults", "currency": "XOF", "earn_rate": "0.02", "point_value": "1"},
        key="defaults-1")  # fmt: skip
    assert created.status_code == 201, created.json()
    assert (created.json()["hold_ttl_seconds"], created.json()["voucher_validity_days"]) == (60, 7)


def test_a_campaign_of_a_closed_program_cannot_be_scheduled_by_patch(api, own_program):
    client = api("ops_marketing")
    created = client.post("/api/v1/campaigns", {
        "program_id": str(own_program.pk), "name": "Win-back", "segment": "inactive",
        "bonus_points": "100", "status": "draft",
        "scheduled_at": (timezone.now() + timedelta(days=1)).isoformat()})  # fmt: skip
    assert created.status_code == 201
    Program.objects.filter(pk=own_program.pk).update(status=Program.Status.CLOSED)
    response = client.patch(
        f"/api/v1/campaigns/{created.json()['id']}", {"status": "scheduled", "bonus_points": "500"}
    )
    assert (response.status_code, response.json()["code"]) == (422, "program_inactive")
    assert Campaign.objects.get().status == Campaign.Status.DRAFT


def test_freezing_a_frozen_member_files_no_approval_request(api, funded, settings):
    settings.LOYALTY_APPROVAL_FREEZE_REQUIRED = True
    MemberBalance.objects.filter(program=funded, member_id="u_1").update(is_frozen=True)
    response = api("finance_ops").post(
        f"/api/v1/programs/{funded.pk}/members/u_1/freeze", {"reason": "fraud"}
    )
    assert response.status_code == 200
    assert response.json()["is_frozen"] is True
    assert not ApprovalRequest.objects.exists()


def test_freezing_twice_is_audited_once(api, funded):
    client = api("finance_ops")
    url = f"/api/v1/programs/{funded.pk}/members/u_1/freeze"
    assert client.post(url, {"reason": "fraud"}).status_code == 200
    assert client.post(url, {"reason": "fraud"}).status_code == 200
    assert AuditEntry.objects.filter(entity_type="balance", action="balance.freeze").count() == 1
    assert MemberBalance.objects.get(program=funded, member_id="u_1").is_frozen
