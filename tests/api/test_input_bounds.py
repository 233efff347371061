"""Input the API must refuse with a 4xx problem and no change (never a 500): numbers with huge
exponents, time zone names that are no zone, cursors the API did not write, other scripts'
digits; and Idempotency-Keys as long as the header allows on member adjustments."""

import hashlib
import json
from base64 import b64encode
from decimal import Decimal

import pytest

from access.idempotency import PLAIN_EXPONENT
from access.models import IdempotencyRecord
from approvals.models import ApprovalRequest
from audit.models import AuditEntry
from loyalty.models import Campaign, LedgerEntry, MemberBalance, Program, Redemption
from loyalty.services import event_ingest
from tests.api.test_problems import assert_problem
from tests.api.test_request_fingerprint import _former_canonical
from tests.factories import PurchaseFactory

pytestmark = pytest.mark.django_db


def counts() -> dict:
    return {
        model.__name__: model.objects.count()
        for model in (
            LedgerEntry, Program, Redemption, Campaign, IdempotencyRecord, AuditEntry,
            ApprovalRequest,
        )
    }  # fmt: skip


def raw_bodies(program) -> list[tuple[str, str, str]]:
    """(method, path, JSON text with HUGE where a number goes) for every kind of write."""
    pid = str(program.pk)
    return [
        ("post", "/api/v1/events", json.dumps({
            "program_id": pid, "member_id": "u_1", "type": "purchase", "amount": "100",
            "currency": program.currency, "metadata": {"n": "HUGE"}})),
        ("post", "/api/v1/events/batch", json.dumps({"events": [{
            "program_id": pid, "member_id": "u_1", "type": "purchase", "amount": "HUGE",
            "currency": program.currency, "idempotency_key": "b-1"}]})),
        ("post", "/api/v1/redemptions", json.dumps({
            "program_id": pid, "member_id": "u_1", "points": "10", "reward_type": "discount",
            "unknown": "HUGE"})),
        ("post", f"/api/v1/programs/{pid}/members/u_1/adjustments", json.dumps({
            "points": "HUGE", "reason": "r"})),
        ("post", "/api/v1/programs", json.dumps({
            "name": "x", "currency": "XOF", "timezone": "UTC", "earn_rate": "HUGE",
            "point_value": "1"})),
        ("patch", f"/api/v1/programs/{pid}", json.dumps({"name": "y", "extra": ["HUGE"]})),
    ]  # fmt: skip


@pytest.mark.parametrize("huge", ["1e1000000", "1E+999999", "-1e-1000000", "0e-999999",
                                  "1e9999999999999999999", "1e401"])  # fmt: skip
def test_a_number_with_a_huge_exponent_is_400_anywhere_and_changes_nothing(api, funded, huge):
    client = api("system")
    before = counts()
    for method, path, text in raw_bodies(funded):
        body = text.replace('"HUGE"', huge)
        response = getattr(client, method)(path, body)
        problem = assert_problem(response, 400, "malformed_request")
        assert "number out of range" in problem["detail"], (path, problem)
    assert counts() == before
    assert Program.objects.get(pk=funded.pk).name == funded.name


def test_numbers_within_the_bound_are_read_as_before(api, funded):
    # A metadata number is stored as a float: 1e300 is one, and stays accepted.
    body = {"program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
            "amount": "100", "currency": funded.currency}  # fmt: skip
    text = json.dumps(body)[:-1] + ', "metadata": {"big": 1.5e300, "small": 1e-300}}'
    response = api("system").post("/api/v1/events", text)
    assert response.status_code == 201, response.content


def _former_fingerprint(method: str, path: str, body) -> str:
    """The fingerprint as stored before numbers stopped being written out in full."""

    text = json.dumps(_former_canonical(body), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{method}\n{path}\n{text}".encode()).hexdigest()


def test_a_request_stored_before_the_upgrade_still_replays(api, funded):
    client = api("system")
    path = "/api/v1/events"
    text = (
        f'{{"program_id": "{funded.pk}", "member_id": "u_1", "type": "purchase", '
        f'"amount": "100", "currency": "{funded.currency}", "metadata": {{"note": [10.50, '
        f"100, 100.000000000000000001, -0.0, 2.5e-7, 1e{PLAIN_EXPONENT}, "
        f"123456789012345678901234567]}}}}"
    )
    parsed = json.loads(text, parse_float=Decimal)
    first = client.post(path, text, key="before-upgrade")
    assert first.status_code == 201, first.content
    record = IdempotencyRecord.objects.get(key="before-upgrade")
    assert record.request_hash == _former_fingerprint("POST", path, parsed)

    before = counts()
    again = client.post(path, text.replace("10.50", "10.5"), key="before-upgrade")
    assert again.status_code == 201
    assert again["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert counts() == before


# Time zones -----------------------------------------------------------------------------

NOT_ZONES = ["America", "Etc", "Africa", "America/", "localtime", "posixrules", "Factory"]


@pytest.mark.parametrize("zone", NOT_ZONES)
def test_a_time_zone_that_is_no_zone_is_400_on_create(api, funded, zone):
    before = counts()
    body = {"name": "x", "currency": "XOF", "timezone": zone, "earn_rate": "0.02",
            "point_value": "1"}  # fmt: skip
    response = api("system").post("/api/v1/programs", body)
    problem = assert_problem(response, 400, "validation_error")
    assert "timezone" in problem["errors"]
    assert counts() == before


@pytest.mark.parametrize("zone", NOT_ZONES)
def test_a_time_zone_that_is_no_zone_is_400_on_update(api, funded, zone):
    before = counts()
    response = api("system").patch(f"/api/v1/programs/{funded.pk}", {"timezone": zone})
    problem = assert_problem(response, 400, "validation_error")
    assert "timezone" in problem["errors"]
    assert counts() == before
    assert Program.objects.get(pk=funded.pk).timezone == funded.timezone


def test_a_real_time_zone_is_still_accepted(api, funded):
    response = api("system").patch(f"/api/v1/programs/{funded.pk}", {"timezone": "Etc/UTC"})
    assert response.status_code == 200, response.content
    assert Program.objects.get(pk=funded.pk).timezone == "Etc/UTC"


# Cursors --------------------------------------------------------------------------------


def b64(text: str) -> str:
    return b64encode(text.encode()).decode()


LISTS = [
    "/api/v1/programs/{program}/members/u_1/transactions",
    "/api/v1/programs/{program}/members/u_1/tier-history",
    "/api/v1/programs",
    "/api/v1/vouchers",
    "/api/v1/campaigns",
    "/api/v1/audit",
    "/api/v1/approvals",
]
BAD_CURSORS = [
    b64("p=abc"),  # the position is not a value of the ordering's field
    b64("p=2026-13-45 99:00:00+00:00"),
    b64("p=99999999999999999999999"),  # past bigint
    b64("p=2026-01-01 10:00:00"),  # naive
    b64("p=%D9%A1%D9%A0"),  # Arabic-Indic 10
    b64("p=1&p=2"),
    b64("x=1"),  # not a field of a cursor
    b64("r=abc"),
    "!!not base64!!",  # DRF skipped what is not base64: the first page
    "YWJj",  # "abc": no field of a cursor, the first page too
    "ünicode",
]


@pytest.mark.parametrize("path", LISTS)
def test_a_cursor_the_api_did_not_write_is_400(api, funded, path, pending_hold):
    client = api("system")
    url = path.format(program=funded.pk)
    before = counts()
    for cursor in BAD_CURSORS:
        response = client.get(url, {"cursor": cursor})
        assert_problem(response, 400, "invalid_cursor")
    assert counts() == before


@pytest.mark.parametrize("path", LISTS)
def test_next_and_previous_links_still_work(api, funded, path, pending_hold, active_voucher):
    client = api("system")
    url = path.format(program=funded.pk)
    first = client.get(url, {"limit": 1}).json()
    if first["next"] is None:
        return  # a list of one row here
    second = client.get(first["next"])
    assert second.status_code == 200, second.content
    previous = second.json()["previous"]
    assert previous is not None
    back = client.get(previous)
    assert back.status_code == 200, back.content
    assert back.json()["results"] == first["results"]


# Other scripts' digits ------------------------------------------------------------------


def test_other_scripts_digits_are_not_decimals(api, funded):
    client = api("system")
    before = counts()
    balance = MemberBalance.objects.get(program=funded, member_id="u_1").points_balance
    for path, body, field in [
        ("/api/v1/redemptions", {"program_id": str(funded.pk), "member_id": "u_1",
                                 "points": "\u0661\u0660", "reward_type": "discount"}, "points"),
        ("/api/v1/events", {"program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
                            "amount": "\u0661\u0660\u0660", "currency": funded.currency}, "amount"),
        (f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
         {"points": "\u0665", "reason": "r"}, "points"),
        ("/api/v1/programs", {"name": "x", "currency": "XOF", "timezone": "UTC",
                              "earn_rate": "\u0660.\u0660\u0662", "point_value": "1"}, "earn_rate"),
    ]:  # fmt: skip
        problem = assert_problem(client.post(path, body), 400, "validation_error")
        assert field in problem["errors"], (path, problem)
    assert counts() == before
    assert MemberBalance.objects.get(program=funded, member_id="u_1").points_balance == balance


@pytest.mark.parametrize("param", ["since", "until"])
def test_other_scripts_digits_are_not_times(api, funded, param):
    url = f"/api/v1/programs/{funded.pk}/members/u_1/transactions"
    arabic_indic = "".join(chr(0x660 + int(c)) if c.isdigit() else c for c in "2026-01-01")
    response = api("system").get(url, {param: f"{arabic_indic}T00:00:00Z"})
    problem = assert_problem(response, 400, "validation_error")
    assert param in problem["errors"]
    assert api("system").get(url, {param: "2026-01-01T00:00:00Z"}).status_code == 200


def test_other_scripts_digits_are_no_page_size(api, funded, pending_hold, active_voucher):
    url = f"/api/v1/programs/{funded.pk}/members/u_1/transactions"
    # Any limit that is no number gets the default size, as "abc" always did.
    assert len(api("system").get(url, {"limit": "\u0661"}).json()["results"]) > 1
    assert len(api("system").get(url, {"limit": "1"}).json()["results"]) == 1


# Long Idempotency-Keys on adjustments -----------------------------------------------------


@pytest.mark.parametrize("length", [244, 245, 255])
def test_an_adjustment_takes_any_key_the_header_allows(api, funded, length):
    client = api("system")
    key = "k" * (length - 1) + "z"
    url = f"/api/v1/programs/{funded.pk}/members/u_1/adjustments"
    response = client.post(url, {"points": "5", "reason": "goodwill"}, key=key)
    assert response.status_code == 201, response.content
    entry = LedgerEntry.objects.get(type="manual_adjust")
    if length <= 244:  # the ledger key it always had: repeats of earlier ones still match
        assert entry.idempotency_key == f"adjustment:{key}"
    else:
        digest = hashlib.sha256(key.encode()).hexdigest()
        assert entry.idempotency_key == f"adjustment:sha256:{digest}"

    before = counts()
    again = client.post(url, {"points": "5", "reason": "goodwill"}, key=key)
    assert (again.status_code, again["Idempotent-Replayed"]) == (201, "true")
    assert counts() == before
    # Another long key of the same beginning is another adjustment.
    other = client.post(url, {"points": "5", "reason": "goodwill"}, key=key[:-1] + "y")
    assert other.status_code == 201
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 2


def test_a_key_spelling_a_long_keys_digest_is_another_adjustment(api, funded):
    """`sha256:<digest of a long key>` is a legal key of its own: it must not take the long
    key's entry (answered with its transaction, or refused as reused with another body)."""
    client = api("system")
    url = f"/api/v1/programs/{funded.pk}/members/u_1/adjustments"
    long_key = "L" * 250
    short_key = "sha256:" + hashlib.sha256(long_key.encode()).hexdigest()
    first = client.post(url, {"points": "5", "reason": "goodwill"}, key=long_key)
    second = client.post(url, {"points": "5", "reason": "goodwill"}, key=short_key)
    assert (first.status_code, second.status_code) == (201, 201), second.content
    assert "Idempotent-Replayed" not in second.headers
    assert second.json()["transaction_id"] != first.json()["transaction_id"]
    assert LedgerEntry.objects.filter(type="manual_adjust").count() == 2
    again = client.post(url, {"points": "5", "reason": "goodwill"}, key=short_key)
    assert again.json()["transaction_id"] == second.json()["transaction_id"]


# Member ids "." and ".." ----------------------------------------------------------------


def _purchase(client, program, member_id: str, *, key: str):
    body = {"program_id": str(program.pk), "member_id": member_id, "type": "purchase",
            "amount": "100", "currency": program.currency}  # fmt: skip
    return client.post("/api/v1/events", body, key=key)


@pytest.mark.parametrize("member_id", [".", ".."])
def test_a_member_id_that_is_a_dot_segment_is_refused(api, funded, member_id):
    """URL clients resolve such a path segment away (and so did the pages' `next` links):
    `/members/../transactions` is another resource. No event may create such a member."""
    client = api("system")
    before = counts()

    response = _purchase(client, funded, member_id, key=f"dot-{len(member_id)}")

    body = assert_problem(response, 400, "validation_error")
    assert "member_id" in body["errors"]
    assert counts() == before


@pytest.mark.parametrize("member_id", [".", ".."])
def test_the_pages_of_a_member_named_by_a_dot_segment_stay_on_its_list(
    api, funded, actor, member_id
):
    """A member named so before such ids were refused: its history's `next` and `previous`
    links page through its own list (they linked to `/members/transactions` and
    `/transactions`, another member's balance or nothing)."""
    for n in range(3):
        event_ingest(
            program=funded,
            event=PurchaseFactory(member_id=member_id, idempotency_key=f"dot-{n}"),
            actor=actor,
        )
    client = api("system")
    seen = []
    page = client.get(f"/api/v1/programs/{funded.pk}/members/{member_id}/transactions",
                      {"limit": 1}).json()  # fmt: skip
    while True:
        seen += [row["transaction_id"] for row in page["results"]]
        if page["next"] is None:
            break
        response = client.get(page["next"])
        assert response.status_code == 200, (page["next"], response.content)
        page = response.json()
    assert len(seen) == len(set(seen)) == 3
    back = client.get(page["previous"])
    assert back.status_code == 200, (page["previous"], back.content)
    assert [row["transaction_id"] for row in back.json()["results"]] == seen[1:2]


def test_member_ids_with_dots_that_are_not_dot_segments_are_members(api, funded, actor):
    client = api("system")
    for n, member_id in enumerate(["...", ".a", "a.", "a..b"]):
        response = _purchase(client, funded, member_id, key=f"dots-{n}")
        assert response.status_code == 201, response.content
        balance = client.get(f"/api/v1/programs/{funded.pk}/members/{member_id}")
        assert balance.status_code == 200, balance.content


@pytest.mark.parametrize(
    "value", ["2027-1-1", "\u0662\u0660\u0662\u0667-\u0660\u0661-\u0660\u0661", "2027-01-01\n"]
)
def test_a_tier_cycle_date_not_written_yyyy_mm_dd_is_400_and_changes_nothing(api, funded, value):
    before = Program.objects.get(pk=funded.pk).tier_cycle_date
    response = api("system").patch(f"/api/v1/programs/{funded.pk}", {"tier_cycle_date": value})
    body = assert_problem(response, 400, "validation_error")
    assert "tier_cycle_date" in body["errors"]
    assert Program.objects.get(pk=funded.pk).tier_cycle_date == before


def test_a_tier_cycle_date_written_yyyy_mm_dd_is_taken(api, funded):
    response = api("system").patch(
        f"/api/v1/programs/{funded.pk}", {"tier_cycle_date": "2099-01-31"}
    )
    assert response.status_code == 200, response.content
    assert response.json()["tier_cycle_date"] == "2099-01-31"
    assert str(Program.objects.get(pk=funded.pk).tier_cycle_date) == "2099-01-31"


@pytest.mark.parametrize(
    ("path", "misspelt"),
    [
        ("/api/v1/programs", "state"),
        ("/api/v1/vouchers", "program"),
        ("/api/v1/campaigns", "programId"),
        ("/api/v1/approvals", "program_id"),  # the filter is `program`
        ("/api/v1/audit", "actor"),
        ("/api/v1/programs/{pid}/members/u_1/transactions", "types"),
    ],
)
def test_a_filter_a_list_does_not_have_is_400_not_ignored(api, funded, path, misspelt):
    """Ignored, a misspelt filter answers the whole list as if it were the one asked for."""
    client = api("system", merchant_id=None)
    url = path.format(pid=funded.pk)
    assert client.get(url, {"limit": 5}).status_code == 200
    body = assert_problem(client.get(url, {misspelt: "x", "limit": 5}), 400, "validation_error")
    assert list(body["errors"]) == [misspelt]
