"""Programs and campaigns over HTTP: create, read, update, suspend; budget changes; scope."""

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.utils import timezone

from audit.models import AuditEntry
from loyalty.models import Campaign, Program
from loyalty.services.budget import budget_spent

from .conftest import OTHER, OWN
from .test_ledger_api import assert_gated

pytestmark = pytest.mark.django_db


def _on(iso: str):
    return time_machine.travel(datetime.fromisoformat(iso), tick=False)


PROGRAM = {
    "merchant_id": OWN, "name": "Eats Rewards", "currency": "XOF", "timezone": "Africa/Dakar",
    "earn_rate": "0.02", "point_value": "1", "expiry_days": 365, "budget_limit": "1000000",
    "max_earn_per_day": "5000", "fraud_detection_enabled": True,
    "tiers": [{"name": "basic", "min_points": "0"}, {"name": "silver", "min_points": "1000"},
              {"name": "gold", "min_points": "5000"}, {"name": "platinum", "min_points": "20000"}],
}  # fmt: skip


def test_create_program_answers_the_wire_format(api):
    response = api("ops_marketing").post("/api/v1/programs", PROGRAM)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["status"] == "active"
    assert (body["merchant_id"], body["currency"], body["earn_rate"]) == (OWN, "XOF", "0.02")
    assert (body["budget_limit"], body["max_earn_per_day"]) == ("1000000.00", "5000.00")
    assert [t["name"] for t in body["tiers"]] == ["basic", "silver", "gold", "platinum"]
    program = Program.objects.get(pk=body["id"])
    assert program.budget_limit == Decimal("1000000")
    assert AuditEntry.objects.filter(entity_type="program", action="program.create").count() == 1


def test_create_program_defaults_to_the_callers_merchant(api):
    body = {k: v for k, v in PROGRAM.items() if k != "merchant_id"}
    response = api("ops_marketing").post("/api/v1/programs", body)
    assert response.json()["merchant_id"] == OWN
    platform = api("ops_marketing", merchant_id=None).post("/api/v1/programs", body)
    assert platform.status_code == 400
    assert "merchant_id" in platform.json()["errors"]


def test_create_program_for_another_merchant_is_404(api):
    response = api("ops_marketing").post("/api/v1/programs", {**PROGRAM, "merchant_id": OTHER})
    assert response.status_code == 404
    assert not Program.objects.exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"currency": "ZZZ"},
        {"earn_rate": "-1"},
        {"point_value": "0"},
        {"timezone": "Mars/Olympus"},
        {"tiers": [{"name": "silver", "min_points": "100"}]},
        {"sira_settings": {"no_such_rule": 1}},
        {"budget_limit": "1e9"},
    ],
    ids=["currency", "rate", "point-value", "timezone", "tiers", "sira", "exponent"],
)
def test_invalid_programs_are_400(api, fields):
    response = api("ops_marketing").post("/api/v1/programs", {**PROGRAM, **fields})
    assert response.status_code == 400, response.json()
    assert response.json()["errors"]
    assert not Program.objects.exists()


def test_list_programs_is_scoped(api, make_program):
    make_program(merchant_id=OWN, name="Mine")
    make_program(merchant_id=OTHER, name="Theirs")
    mine = api("merchant_admin").get("/api/v1/programs").json()["results"]
    assert [p["name"] for p in mine] == ["Mine"]
    everything = api("auditor", merchant_id=None).get("/api/v1/programs").json()["results"]
    assert {p["name"] for p in everything} == {"Mine", "Theirs"}


def test_update_program_fields(api, own_program):
    response = api("ops_marketing").patch(
        f"/api/v1/programs/{own_program.pk}", {"name": "Renamed", "earn_rate": "0.03"}
    )
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["earn_rate"]) == ("Renamed", "0.03")
    own_program.refresh_from_db()
    assert own_program.earn_rate == Decimal("0.03")


def test_tiers_read_back_from_get_can_be_sent_back_in_a_patch(api, own_program):
    client = api("ops_marketing")
    url = f"/api/v1/programs/{own_program.pk}"
    tiers = client.get(url).json()["tiers"]
    assert [t["rank"] for t in tiers] == list(range(len(tiers)))
    tiers[-1]["earn_multiplier"] = "3"
    response = client.patch(url, {"tiers": tiers})
    assert response.status_code == 200, response.json()
    assert Decimal(response.json()["tiers"][-1]["earn_multiplier"]) == 3
    # Thresholds left out default to zero, in a PATCH too.
    single = client.patch(url, {"tiers": [{"name": "solo", "rank": 0}]})
    assert single.status_code == 200, single.json()
    assert [(t["name"], t["rank"]) for t in single.json()["tiers"]] == [("solo", 0)]


READ_ONLY_PROGRAM_FIELDS = {
    "id", "merchant_id", "currency", "status", "budget_spent", "created_at", "updated_at",
}  # fmt: skip


def test_a_programs_read_without_its_read_only_fields_patches_back_unchanged(api, own_program):
    """docs/API.md: what a PATCH may change can be sent back as GET wrote it; the read-only
    fields are each a 400 there (and the refused PATCH changes nothing)."""
    client = api("system")
    url = f"/api/v1/programs/{own_program.pk}"
    read = client.get(url).json()
    assert read.keys() >= READ_ONLY_PROGRAM_FIELDS
    whole = client.patch(url, read)
    assert whole.status_code == 400
    assert set(whole.json()["errors"]) == READ_ONLY_PROGRAM_FIELDS
    changeable = {
        name: value for name, value in read.items() if name not in READ_ONLY_PROGRAM_FIELDS
    }
    response = client.patch(url, changeable)
    assert response.status_code == 200, response.json()
    after = client.get(url).json()
    assert {k: v for k, v in after.items() if k != "updated_at"} == {
        k: v for k, v in read.items() if k != "updated_at"
    }


def test_a_tier_rank_that_its_thresholds_do_not_give_is_400_and_changes_nothing(api, own_program):
    client = api("ops_marketing")
    url = f"/api/v1/programs/{own_program.pk}"
    before = client.get(url).json()["tiers"]
    swapped = [{**t, "rank": len(before) - 1 - t["rank"]} for t in before]
    response = client.patch(url, {"tiers": swapped})
    assert response.status_code == 400
    assert "tiers" in response.json()["errors"]
    assert client.get(url).json()["tiers"] == before


@pytest.mark.parametrize("method", ["post", "patch"])
def test_a_spend_programs_tiers_read_back_are_accepted_as_they_are(api, method):
    """Ranks follow the thresholds of the program's basis: a spend program's follow
    min_spend, whatever its min_points (ordered by min_points first, its own tiers read with
    GET were a 400)."""
    client = api("ops_marketing")
    body = {
        "merchant_id": OWN, "name": "Spend Rewards", "currency": "XOF", "earn_rate": "0.02",
        "point_value": "1", "tier_basis": "spend",
        "tiers": [
            {"name": "basic"},
            {"name": "silver", "min_spend": "100000", "min_points": "5000"},
            {"name": "gold", "min_spend": "500000", "min_points": "1000"},
        ],
    }  # fmt: skip
    created = client.post("/api/v1/programs", body, key="spend-1").json()
    assert [(t["name"], t["rank"]) for t in created["tiers"]] == [
        ("basic", 0), ("silver", 1), ("gold", 2)
    ]  # fmt: skip

    if method == "patch":
        response = client.patch(f"/api/v1/programs/{created['id']}", {"tiers": created["tiers"]})
    else:
        response = client.post(
            "/api/v1/programs", {**body, "tiers": created["tiers"]}, key="spend-2"
        )

    assert response.status_code in (200, 201), response.json()
    assert response.json()["tiers"] == created["tiers"]


@_on("2026-06-01T12:00:00+00:00")
def test_the_tier_review_date_is_read_set_and_cleared(api, own_program):
    client = api("ops_marketing")
    url = f"/api/v1/programs/{own_program.pk}"
    assert client.get(url).json()["tier_cycle_date"] is None
    response = client.patch(url, {"tier_cycle_date": "2027-01-01"})
    assert response.status_code == 200, response.json()
    assert response.json()["tier_cycle_date"] == "2027-01-01"
    own_program.refresh_from_db()
    assert own_program.tier_cycle_date.isoformat() == "2027-01-01"
    for bad in ("2027-02-30", "01/01/2027", 20270101):
        refused = client.patch(url, {"tier_cycle_date": bad})
        assert refused.status_code == 400, bad
        assert "tier_cycle_date" in refused.json()["errors"]
    assert client.patch(url, {"tier_cycle_date": None}).json()["tier_cycle_date"] is None


def test_a_tier_review_date_before_the_programs_today_is_400_and_changes_nothing(api, make_program):
    # 02:00 UTC on 28 November: still the 27th in New York, already the 28th in Dakar.
    with _on("2026-11-28T02:00:00+00:00"):
        new_york = make_program(
            merchant_id=OWN, timezone="America/New_York", tier_cycle_date=date(2027, 1, 1)
        )
        dakar = make_program(merchant_id=OWN, name="Dakar")
        client = api("ops_marketing")
        for program, past in ((new_york, "2026-11-26"), (dakar, "2026-11-27")):
            url = f"/api/v1/programs/{program.pk}"
            before = client.get(url).json()
            refused = client.patch(url, {"tier_cycle_date": past, "name": "Renamed"})
            body = refused.json()
            assert (refused.status_code, body["code"]) == (400, "validation_error"), body
            assert list(body["errors"]) == ["tier_cycle_date"]
            assert client.get(url).json() == before
        assert not AuditEntry.objects.filter(action="program.update").exists()

        # The program's own today, or later, is accepted; null (no review) too.
        for program, day in (
            (new_york, "2026-11-27"),
            (dakar, "2026-11-28"),
            (dakar, "2030-02-28"),
        ):
            response = client.patch(f"/api/v1/programs/{program.pk}", {"tier_cycle_date": day})
            assert (response.status_code, response.json()["tier_cycle_date"]) == (200, day)
        cleared = client.patch(f"/api/v1/programs/{dakar.pk}", {"tier_cycle_date": None})
        assert (cleared.status_code, cleared.json()["tier_cycle_date"]) == (200, None)
        # A time zone changed in the same PATCH is the one whose today counts.
        moved = client.patch(
            f"/api/v1/programs/{dakar.pk}",
            {"timezone": "America/New_York", "tier_cycle_date": "2026-11-27"},
        )
        assert (moved.status_code, moved.json()["tier_cycle_date"]) == (200, "2026-11-27")

        # At creation too.
        created = client.post("/api/v1/programs", {**PROGRAM, "tier_cycle_date": "2026-11-27"})
        assert (created.status_code, list(created.json()["errors"])) == (400, ["tier_cycle_date"])
        today = client.post("/api/v1/programs", {**PROGRAM, "tier_cycle_date": "2026-11-28"})
        assert (today.status_code, today.json()["tier_cycle_date"]) == (201, "2026-11-28")


def test_a_stored_review_date_now_past_can_be_sent_back_unchanged(api, own_program):
    """A program read with GET and sent back in a PATCH: the date the program already has
    (passed since, while no review ran) is not a date being set."""
    Program.objects.filter(pk=own_program.pk).update(tier_cycle_date=date(2024, 1, 1))
    client = api("ops_marketing")
    url = f"/api/v1/programs/{own_program.pk}"
    body = client.get(url).json()
    fields = {k: body[k] for k in ("name", "earn_rate", "tier_cycle_date", "tiers")}
    response = client.patch(url, {**fields, "name": "Renamed"})
    assert response.status_code == 200, response.json()
    assert response.json()["tier_cycle_date"] == "2024-01-01"
    assert client.patch(url, {"tier_cycle_date": "2024-01-02"}).status_code == 400


def test_a_past_review_date_with_a_gated_budget_change_files_no_approval_request(api, make_program):
    from approvals.models import ApprovalRequest

    program = make_program(merchant_id=OWN, budget_limit=Decimal("100000"))
    response = api("system").patch(
        f"/api/v1/programs/{program.pk}",
        {"budget_limit": "200001", "tier_cycle_date": "2020-01-01"},
    )
    assert (response.status_code, list(response.json()["errors"])) == (400, ["tier_cycle_date"])
    assert not ApprovalRequest.objects.exists()


def test_budget_change_needs_budgets_permission_and_approval_above_threshold(api, make_program):
    program = make_program(merchant_id=OWN, budget_limit=Decimal("100000"))
    url = f"/api/v1/programs/{program.pk}"
    denied = api("ops_marketing").patch(url, {"budget_limit": "120000"})
    assert (denied.status_code, denied.json()["code"]) == (403, "permission_denied")
    finance = api("finance_ops")
    assert finance.patch(url, {"name": "x"}).status_code == 403  # budgets only
    small = finance.patch(url, {"budget_limit": "150000"})
    assert (small.status_code, small.json()["budget_limit"]) == (200, "150000.00")
    big = finance.patch(url, {"budget_limit": "200001"})
    assert_gated(big.status_code, big.json())
    program.refresh_from_db()
    assert program.budget_limit == Decimal("150000")
    assert budget_spent(program=program) == 0


def test_suspend_needs_approval(api, own_program):
    response = api("finance_ops").post(
        f"/api/v1/programs/{own_program.pk}/suspend", {"reason": "fraud wave"}
    )
    assert_gated(response.status_code, response.json())
    own_program.refresh_from_db()
    assert own_program.status == "active"


def campaign_body(program, **fields):
    body = {
        "program_id": str(program.pk),
        "name": "Win-back",
        "segment": "inactive",
        "bonus_points": "100",
        "scheduled_at": (timezone.now() + timedelta(days=1)).isoformat(),
    }
    body.update(fields)
    return body


def test_campaign_create_read_update(api, own_program):
    client = api("ops_marketing")
    created = client.post("/api/v1/campaigns", campaign_body(own_program))
    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["status"], body["bonus_points"], body["segment"]) == (
        "scheduled", "100.00", "inactive"
    )  # fmt: skip
    url = f"/api/v1/campaigns/{body['id']}"
    assert client.get(url).json()["name"] == "Win-back"
    updated = client.patch(url, {"bonus_points": "150", "segment": "at_risk"})
    assert (updated.status_code, updated.json()["bonus_points"]) == (200, "150.00")
    cancelled = client.patch(url, {"status": "cancelled"})
    assert cancelled.json()["status"] == "cancelled"
    refused = client.patch(url, {"name": "too late"})
    assert (refused.status_code, refused.json()["code"]) == (409, "invalid_state")
    campaign = Campaign.objects.get(pk=body["id"])
    assert (campaign.name, campaign.status) == ("Win-back", "cancelled")
    actions = list(
        AuditEntry.objects.filter(entity_type="campaign").values_list("action", flat=True)
    )
    assert actions.count("campaign.update") == 2
    assert "campaign.create" in actions


@pytest.mark.parametrize(
    "fields",
    [{"bonus_points": "0"}, {"segment": "vip"}, {"scheduled_at": "2026-12-01T10:00:00"},
     {"status": "running"}, {"bonus_points": "1.001"}],
    ids=["zero", "segment", "naive", "status", "places"],
)  # fmt: skip
def test_invalid_campaigns_are_400(api, own_program, fields):
    response = api("ops_marketing").post("/api/v1/campaigns", campaign_body(own_program, **fields))
    assert response.status_code == 400
    assert not Campaign.objects.exists()


def test_fields_a_body_does_not_have_are_refused_by_name(api, own_program, make_program):
    """A misspelled limit must not create an unlimited program, nor a field that cannot be
    changed answer 200 with nothing changed: each unknown field is a 400 naming it."""
    client = api("ops_marketing")
    typo = {k: v for k, v in PROGRAM.items() if k != "max_earn_per_day"}
    response = client.post("/api/v1/programs", {**typo, "max_earn_per_dya": "5000"})
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert list(response.json()["errors"]) == ["max_earn_per_dya"]
    tier_typo = {**PROGRAM, "tiers": [{"name": "basic", "min_point": "0"}]}
    assert client.post("/api/v1/programs", tier_typo).status_code == 400
    assert Program.objects.count() == 1  # own_program
    url = f"/api/v1/programs/{own_program.pk}"
    for change in ({"currency": "USD", "name": "Renamed"}, {"status": "closed"}):
        response = client.patch(url, change)
        assert response.status_code == 400
        assert set(response.json()["errors"]) == set(change) - {"name"}
    own_program.refresh_from_db()
    assert (own_program.currency, own_program.status) == ("XOF", "active")
    assert own_program.name != "Renamed"
    campaign = client.post("/api/v1/campaigns", campaign_body(own_program)).json()
    other = make_program(merchant_id=OTHER)
    moved = client.patch(
        f"/api/v1/campaigns/{campaign['id']}", {"program_id": str(other.pk), "name": "x"}
    )
    assert (moved.status_code, list(moved.json()["errors"])) == (400, ["program_id"])
    assert Campaign.objects.get(pk=campaign["id"]).name == "Win-back"


@pytest.mark.parametrize(
    "fields",
    [{"name": 123}, {"expiry_days": "12"}, {"expiry_days": 12.0}, {"expiry_days": "\u0661\u0662"},
     {"fraud_detection_enabled": "yes"}, {"fraud_detection_enabled": 1},
     {"tiers": [{"name": 7}]}],
    ids=["name-number", "days-text", "days-float", "days-arabic", "flag-text", "flag-number",
         "tier-name-number"],
)  # fmt: skip
def test_a_field_of_another_json_type_is_400_not_coerced(api, fields):
    response = api("ops_marketing").post("/api/v1/programs", {**PROGRAM, **fields})
    assert response.status_code == 400
    assert response.json()["code"] == "validation_error"
    assert not Program.objects.exists()


def test_a_redemption_with_a_number_for_program_or_capture_is_400(api, own_program):
    body = {"program_id": str(own_program.pk), "member_id": "u_1", "points": "10",
            "reward_type": "discount"}  # fmt: skip
    for fields in ({"program_id": 5}, {"capture": "yes"}):
        response = api("system").post("/api/v1/redemptions", {**body, **fields})
        assert (response.status_code, list(response.json()["errors"])) == (400, list(fields))


def test_a_budget_finer_than_its_currency_is_400(api, own_program):
    client = api("system")
    response = client.post("/api/v1/programs", {**PROGRAM, "budget_limit": "100.50"})
    assert (response.status_code, list(response.json()["errors"])) == (400, ["budget_limit"])
    patch = client.patch(f"/api/v1/programs/{own_program.pk}", {"budget_limit": "999.5"})
    assert (patch.status_code, list(patch.json()["errors"])) == (400, ["budget_limit"])
    own_program.refresh_from_db()
    assert own_program.budget_limit != Decimal("999.5")
    usd = client.post("/api/v1/programs", {**PROGRAM, "currency": "USD", "budget_limit": "100.50"})
    assert usd.status_code == 201, usd.json()


def test_campaigns_of_another_merchant_are_404(api, make_program):
    other = make_program(merchant_id=OTHER)
    created = api("ops_marketing", merchant_id=OTHER).post("/api/v1/campaigns",
                                                           campaign_body(other))  # fmt: skip
    client = api("ops_marketing")
    assert client.get(f"/api/v1/campaigns/{created.json()['id']}").status_code == 404
    patched = client.patch(f"/api/v1/campaigns/{created.json()['id']}", {"name": "mine now"})
    assert patched.status_code == 404
    assert client.post("/api/v1/campaigns", campaign_body(other)).status_code == 404
    assert client.get("/api/v1/campaigns").json()["results"] == []
    assert Campaign.objects.get().name == "Win-back"


@pytest.mark.parametrize("listed", ["campaigns", "programs", "vouchers"])
def test_pages_of_rows_sharing_a_created_at_neither_skip_nor_repeat(api, make_program, listed):
    """Imports and batches create rows with one timestamp: the cursor steps past them by
    count, which needs them in the same order on every page."""
    from datetime import UTC, datetime

    from loyalty.models import Campaign, Program, Voucher
    from tests.api.conftest import OWN
    from tests.conftest import hold

    model = {"campaigns": Campaign, "programs": Program, "vouchers": Voucher}[listed]
    program = make_program(merchant_id=OWN)
    client = api("system")
    if listed == "campaigns":
        for n in range(30):
            client.post("/api/v1/campaigns", {"program_id": str(program.pk), "name": f"c{n}",
                        "segment": "all", "bonus_points": "10",
                        "scheduled_at": "2099-01-01T00:00:00Z"})  # fmt: skip
    elif listed == "programs":
        for n in range(29):
            make_program(merchant_id=OWN, name=f"p{n}")
    else:
        from loyalty.actors import Actor
        from loyalty.services import event_ingest
        from tests.factories import PointsEventFactory

        actor = Actor(id="ops", role="system")
        grant = PointsEventFactory(member_id="u_1", points=Decimal(3000))
        event_ingest(program=program, event=grant, actor=actor)
        for n in range(30):
            hold(program, "10", actor, key=f"v{n}", capture=True)
    model.objects.update(created_at=datetime(2026, 1, 1, tzinfo=UTC))
    expected = {str(pk) for pk in model.objects.values_list("pk", flat=True)}
    seen, url = [], f"/api/v1/{listed}?limit=7"
    while url:
        body = client.get(url).json()
        seen += [item.get("id") or item.get("code") for item in body["results"]]
        url = body["next"]
    if listed == "vouchers":
        expected = set(Voucher.objects.values_list("code", flat=True))
    assert len(seen) == len(set(seen)), "an item was listed twice"
    assert set(seen) == expected, "an item was never listed"


@pytest.mark.parametrize(
    "tier",
    [{"min_points": "0"}, {"name": "basic", "min_points": "-"}, {"name": "Bad Name"}],
)
def test_a_tier_patch_is_validated_whole(api, funded, tier):
    """A PATCH validates its fields partially, never a new tier list: a tier without its
    name is a 400 on `tiers` (it was a 500), and nothing changes."""
    before = list(funded.tiers.values_list("name", "min_points"))
    response = api("system").patch(f"/api/v1/programs/{funded.pk}", {"tiers": [tier]})
    assert (response.status_code, response.json()["code"]) == (400, "validation_error")
    assert list(response.json()["errors"]) == ["tiers"]
    assert list(funded.tiers.values_list("name", "min_points")) == before


def test_a_tier_patch_fills_in_the_defaults(api, funded):
    response = api("system").patch(
        f"/api/v1/programs/{funded.pk}",
        {"tiers": [{"name": "basic"}, {"name": "gold", "min_points": "500"}]},
    )
    assert response.status_code == 200, response.content
    tiers = response.json()["tiers"]
    assert [(t["name"], t["min_points"], t["earn_multiplier"]) for t in tiers] == [
        ("basic", "0.00", "1.00"), ("gold", "500.00", "1.00"),
    ]  # fmt: skip


def test_new_tiers_are_in_the_programs_audit_entry(api, funded):
    """Thresholds and multipliers decide what members earn: who changed them, and from what,
    is in the trail (a tier-only PATCH recorded identical before and after)."""
    before = list(funded.tiers.order_by("rank").values_list("name", flat=True))
    response = api("system").patch(
        f"/api/v1/programs/{funded.pk}",
        {"tiers": [{"name": name, "min_points": str(i * 100), "earn_multiplier": "3"}
                   for i, name in enumerate(before)]},
    )  # fmt: skip
    assert response.status_code == 200, response.content
    entry = AuditEntry.objects.filter(action="program.update", entity_id=str(funded.pk)).latest(
        "id"
    )
    assert [t["name"] for t in entry.changes["before"]["tiers"]] == before
    assert {t["earn_multiplier"] for t in entry.changes["after"]["tiers"]} == {"3.000"}
    assert entry.changes["before"]["tiers"] != entry.changes["after"]["tiers"]
    created = AuditEntry.objects.get(action="program.create", entity_id=str(funded.pk))
    assert [t["name"] for t in created.changes["after"]["tiers"]] == before
