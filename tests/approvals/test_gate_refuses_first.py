"""The approval gate files no request for an operation the service would refuse: what is
refused below the threshold is refused, with the same problem, above it."""

import pytest

from approvals.models import ApprovalRequest
from loyalty.actors import Actor
from loyalty.models import LedgerEntry, Program
from loyalty.services import program_set_status

pytestmark = pytest.mark.django_db

OVER = "20000"  # over the balance_adjustment threshold (10,000)


def adjust(program, points, **extra):
    return {"program_id": str(program.pk), "member_id": "u_1", "type": "manual_adjust",
            "points": points, "reason": "goodwill", **extra}  # fmt: skip


def refused(response, status, code):
    assert (response.status_code, response.json()["code"]) == (status, code), response.content


@pytest.mark.parametrize("points", ["5", OVER])
def test_an_adjustment_event_in_another_currency_is_refused_at_any_size(api, funded, points):
    client = api("system", sub="ops-maker")
    body = adjust(funded, points, currency="EUR")
    refused(client.post("/api/v1/events", body), 422, "currency_mismatch")
    item = client.post("/api/v1/events/batch", {"events": [{**body, "idempotency_key": "b1"}]})
    assert item.json()["results"][0]["error"]["code"] == "currency_mismatch"
    assert not ApprovalRequest.objects.exists()
    assert not LedgerEntry.objects.filter(type="manual_adjust").exists()


@pytest.mark.parametrize("points", ["5", OVER])
def test_an_adjustment_of_a_suspended_program_is_refused_at_any_size(api, funded, points):
    program_set_status(program_id=funded.pk, status="suspended", actor=Actor(id="o", role="system"))
    ops = api("ops_marketing", "finance_ops", merchant_id=None, sub="ops-maker")
    path = f"/api/v1/programs/{funded.pk}/members/u_1/adjustments"
    refused(ops.post(path, {"points": points, "reason": "r"}), 422, "program_inactive")
    system = api("system", sub="ops-maker")
    refused(system.post("/api/v1/events", adjust(funded, points)), 422, "program_inactive")
    assert not ApprovalRequest.objects.exists()

    # Once active again, the adjustment is filed as usual: nothing pending blocks it.
    program_set_status(program_id=funded.pk, status="active", actor=Actor(id="o", role="system"))
    response = ops.post(path, {"points": points, "reason": "r"})
    assert response.status_code == (202 if points == OVER else 201)


@pytest.mark.parametrize(
    ("invalid", "field"),
    [
        ({"timezone": "America"}, "timezone"),
        ({"tiers": [{"name": "basic", "min_points": "0"}, {"name": "basic", "min_points": "9"}]},
         "tiers"),
        ({"tiers": [{"name": "silver", "min_points": "5"}]}, "tiers"),
    ],
)  # fmt: skip
def test_a_budget_change_with_an_invalid_field_is_refused_not_filed(api, funded, invalid, field):
    fin = api("ops_marketing", "finance_ops", merchant_id=None, sub="fin-maker")
    path = f"/api/v1/programs/{funded.pk}"
    alone = fin.patch(path, invalid)
    assert alone.status_code == 400
    assert field in alone.json()["errors"]

    both = fin.patch(path, {"budget_limit": "900000", **invalid})
    assert both.status_code == 400
    assert both.json()["errors"] == alone.json()["errors"]
    assert not ApprovalRequest.objects.exists()
    assert Program.objects.get(pk=funded.pk).budget_limit is None

    # A valid budget change after it is filed, not blocked by a request that could never run.
    assert fin.patch(path, {"budget_limit": "900000"}).status_code == 202


def test_a_budget_change_with_valid_tiers_files_them_with_the_request(api, funded):
    fin = api("ops_marketing", "finance_ops", merchant_id=None, sub="fin-maker")
    tiers = [{"name": "basic", "min_points": "0"}, {"name": "gold", "min_points": "500"}]
    body = {"budget_limit": "900000", "tiers": tiers}
    response = fin.patch(f"/api/v1/programs/{funded.pk}", body)
    assert response.status_code == 202
    request = ApprovalRequest.objects.get(operation="budget_change")
    assert [t["name"] for t in request.payload["changes"]["tiers"]] == ["basic", "gold"]
