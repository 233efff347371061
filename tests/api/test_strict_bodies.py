"""Input the API used to take although its contract refuses it: padded decimals and times,
SIRA settings in forms other than plain decimals, unknown members of the batch envelope, and
bodies sent to actions that take none. Each is a 400 naming the field, and changes nothing."""

import pytest

from loyalty.models import Program, Redemption, Voucher
from tests.api.test_input_bounds import counts
from tests.api.test_problems import assert_problem

pytestmark = pytest.mark.django_db


def _event(program, **fields) -> dict:
    return {
        "program_id": str(program.pk), "member_id": "u_1", "type": "purchase",
        "amount": "100", "currency": program.currency, **fields,
    }  # fmt: skip


@pytest.mark.parametrize("amount", [" 12", "12 ", "12\n", "\t12", "1 2"])
def test_a_padded_decimal_is_400_single_and_batch(api, funded, amount):
    client = api("system")
    before = counts()
    problem = assert_problem(
        client.post("/api/v1/events", _event(funded, amount=amount)), 400, "validation_error"
    )
    assert "amount" in problem["errors"]
    body = {"events": [_event(funded, amount=amount, idempotency_key="pad-1")]}
    response = client.post("/api/v1/events/batch", body)
    assert response.status_code == 200
    [item] = response.json()["results"]
    assert item["status"] == 400
    assert "amount" in item["error"]["errors"]
    assert counts()["LedgerEntry"] == before["LedgerEntry"]


@pytest.mark.parametrize("at", [" 2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z\n"])
def test_a_padded_time_is_400(api, funded, at):
    before = counts()
    problem = assert_problem(
        api("system").post("/api/v1/events", _event(funded, occurred_at=at)),
        400,
        "validation_error",
    )
    assert "occurred_at" in problem["errors"]
    assert counts()["LedgerEntry"] == before["LedgerEntry"]


def test_plain_decimals_and_times_are_still_read(api, funded):
    response = api("system").post(
        "/api/v1/events", _event(funded, amount="1250", occurred_at="2026-01-01T00:00:00Z")
    )
    assert response.status_code == 201, response.json()


@pytest.mark.parametrize(
    "value",
    ["1e1", "\u0661\u0660", "-0", " 10", "10\n", "1e-9", "+5", "0x10", -1, True, None, [1]],
)
def test_a_sira_number_in_another_form_is_400_and_not_stored(api, funded, value):
    before = Program.objects.get(pk=funded.pk).sira_settings
    response = api("ops_marketing").patch(
        f"/api/v1/programs/{funded.pk}", {"sira_settings": {"high_value_amount": value}}
    )
    problem = assert_problem(response, 400, "validation_error")
    assert "sira_settings" in problem["errors"]
    assert Program.objects.get(pk=funded.pk).sira_settings == before


@pytest.mark.parametrize("value", ["750", "750.25", 750, 0.05, 0.00005, "0.123456789"])
def test_a_sira_number_in_plain_form_is_stored_and_scores(api, funded, value):
    client = api("ops_marketing")
    response = client.patch(
        f"/api/v1/programs/{funded.pk}", {"sira_settings": {"high_value_amount": value}}
    )
    assert response.status_code == 200, response.json()
    assert Program.objects.get(pk=funded.pk).sira_settings == {"high_value_amount": value}
    assert api("system").post("/api/v1/events", _event(funded)).status_code == 201


def test_the_batch_envelope_holds_events_only(api, funded):
    before = counts()
    body = {"events": [_event(funded, idempotency_key="env-1")], "evnets": []}
    problem = assert_problem(
        api("system").post("/api/v1/events/batch", body), 400, "validation_error"
    )
    assert problem["errors"] == {"evnets": ["Not a field of this request."]}
    assert counts() == before


@pytest.mark.parametrize("body", [{"voucher_value": "999999"}, {"points": "1"}, [], '"x"'])
def test_capture_and_release_take_no_body(api, pending_hold, body):
    client = api("system")
    before = counts()
    for action in ("capture", "release"):
        response = client.post(f"/api/v1/redemptions/{pending_hold.pk}/{action}", body)
        assert_problem(response, 400, "validation_error")
    assert counts() == before
    pending_hold.refresh_from_db()
    assert pending_hold.status == Redemption.Status.PENDING


@pytest.mark.parametrize("body", ["", {}, "null"])
def test_capture_takes_no_body_or_an_empty_object(api, pending_hold, body):
    response = api("system").post(f"/api/v1/redemptions/{pending_hold.pk}/capture", body)
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "completed"


def test_voucher_redeem_takes_no_body(api, active_voucher):
    client = api("system")
    url = f"/api/v1/vouchers/{active_voucher.code}/redeem"
    assert_problem(client.post(url, {"value": "1"}), 400, "validation_error")
    assert Voucher.objects.get(pk=active_voucher.pk).status == Voucher.Status.ACTIVE
    assert client.post(url, {}).status_code == 200


def test_settings_stored_in_another_form_are_rewritten_with_the_same_value(funded):
    from importlib import import_module

    from django.apps import apps

    from sira.scoring import sira_settings_resolve

    migration = import_module("loyalty.migrations.0012_sira_settings_strict_numbers")
    stored = {
        "high_value_amount": "1e3", "ltv_spend": "\u0661\u0660", "churn_high_bonus": "-0",
        "first_daily_purchase_points": " 10", "frequency_bonus": "0.005",
        "promoted_modules": ["eats"], "enabled": True, "frequency_days": 3,
        "churn_medium_bonus": 5e-05, "engagement_bonus": 1e-25, "cross_module_bonus": "1e-25",
    }  # fmt: skip
    Program.objects.filter(pk=funded.pk).update(sira_settings=stored)
    migration.sira_numbers_plain(apps, None)
    settings = Program.objects.get(pk=funded.pk).sira_settings
    assert settings == {
        **stored, "high_value_amount": "1000", "ltv_spend": "10", "churn_high_bonus": "0",
        "first_daily_purchase_points": "10", "engagement_bonus": "0", "cross_module_bonus": "0",
    }  # fmt: skip
    sira_settings_resolve(settings)  # every purchase of the program reads them
