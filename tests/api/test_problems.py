"""Errors are RFC 9457 problem details with stable codes; bad input is never a 500."""

import pytest

from access.models import IdempotencyRecord
from loyalty.models import LedgerEntry

pytestmark = pytest.mark.django_db


def assert_problem(response, status, code):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["type"].endswith(code)
    assert body["title"]
    assert body["detail"]
    return body


def test_malformed_json_is_400(api, funded):
    client = api("system")
    response = client.post("/api/v1/events", b'{"program_id": ', key="x1")
    assert_problem(response, 400, "malformed_request")


@pytest.mark.parametrize("depth", [65, 600])
@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/events/batch"])
def test_a_body_nested_too_deep_is_400_and_writes_nothing(api, funded, path, depth):
    # 600 levels parse, but went past Python's recursion limit afterwards (a 500).
    body = ("[" * depth + "]" * depth).encode()
    payload = b'{"program_id": "%s", "events": ' % str(funded.pk).encode() + body + b"}"
    entries = LedgerEntry.objects.count()

    response = api("system").post(path, payload, key=f"deep-{depth}")

    problem = assert_problem(response, 400, "malformed_request")
    assert "nested" in problem["detail"]
    assert LedgerEntry.objects.count() == entries
    assert not IdempotencyRecord.objects.filter(key=f"deep-{depth}").exists()


def test_nan_and_wrong_media_type_are_refused(api, funded):
    client = api("system")
    response = client.post("/api/v1/events", b'{"amount": NaN}', key="x2")
    assert_problem(response, 400, "malformed_request")
    response = client.post(
        "/api/v1/events", b"amount=1", key="x3", content_type="application/x-www-form-urlencoded"
    )
    assert_problem(response, 415, "unsupported_media_type")


def test_validation_errors_are_per_field(api, funded):
    response = api("system").post(
        "/api/v1/redemptions",
        {"program_id": "nope", "points": "1.234", "reward_type": "cash"},
    )
    body = assert_problem(response, 400, "validation_error")
    assert set(body["errors"]) == {"program_id", "member_id", "points", "reward_type"}
    assert all(isinstance(m, list) and m for m in body["errors"].values())


def test_oversized_body_is_413(api, funded, settings):
    settings.LOYALTY_API_MAX_BODY_BYTES = 1000
    response = api("system").post(
        "/api/v1/events", {"program_id": str(funded.pk), "metadata": {"x": "y" * 2000}}
    )
    assert_problem(response, 413, "payload_too_large")
    assert LedgerEntry.objects.count() == 1


def test_only_a_batch_may_send_a_large_body(api, funded):
    """A body is parsed and fingerprinted before it is validated: a single write's body is
    held to LOYALTY_API_MAX_SINGLE_BODY_BYTES (64 KiB), far above any valid one, while a
    batch of 1,000 events may take 2 MiB."""
    numbers = "[" + ",".join(["1"] * 40_000) + "]"  # ~80 KB of small JSON values
    event = (f'{{"program_id": "{funded.pk}", "member_id": "u_2", "type": "purchase", '
             f'"amount": "100", "currency": "XOF", "metadata": {{"n": {numbers}}}}}')  # fmt: skip
    client = api("system")
    assert_problem(client.post("/api/v1/events", event), 413, "payload_too_large")
    items = ",".join(
        f'{{"program_id": "{funded.pk}", "member_id": "b{i}", "type": "purchase", '
        f'"amount": "100", "currency": "XOF", "idempotency_key": "k{i}", '
        f'"metadata": {{"note": "{"x" * 300}"}}}}'
        for i in range(300)
    )
    batch = f'{{"events": [{items}]}}'
    assert len(batch) > 64 * 1024
    response = client.post("/api/v1/events/batch", batch)
    assert response.status_code == 200
    assert {r["status"] for r in response.json()["results"]} == {201}
    assert LedgerEntry.objects.count() == 1 + 300


def test_unknown_api_url_and_method(api, funded):
    client = api("system")
    assert_problem(client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_problem(client.get("/api/v1/programs/not-a-uuid"), 404, "not_found")
    assert_problem(client.get(f"/api/v1/programs/{funded.pk}/members/a%00b"), 404, "not_found")
    response = client.delete(f"/api/v1/programs/{funded.pk}", key=False)
    assert_problem(response, 405, "method_not_allowed")


@pytest.mark.parametrize("role", ["system", "merchant_admin"])
def test_options_is_a_method_the_api_does_not_take(api, funded, role):
    """The schema describes the endpoints; OPTIONS is not one of their methods."""
    client = api(role)
    for path in ("/api/v1/events", f"/api/v1/programs/{funded.pk}"):
        response = client.client.options(path, headers=client._headers(False, None))
        assert_problem(response, 405, "method_not_allowed")
        assert "OPTIONS" not in response["Allow"]


def test_forbidden_is_403_problem(api, funded):
    response = api("auditor").post(
        "/api/v1/events", {"program_id": str(funded.pk), "member_id": "u", "type": "purchase"}
    )
    assert_problem(response, 403, "permission_denied")


def test_huge_numbers_are_400_not_500(api, funded):
    client = api("system")
    response = client.post(
        f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
        {"points": "123456789012345678901", "reason": "overflow"},
    )
    assert_problem(response, 400, "validation_error")
    response = client.post(
        "/api/v1/events/batch", {"events": [{"points": "9" * 30, "idempotency_key": "k"}]}
    )
    assert response.status_code == 200
    assert response.json()["results"][0]["status"] == 400


def test_schema_and_swagger_ui_are_served_offline(client):
    schema = client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    spec = schema.json()
    assert "/api/v1/events" in spec["paths"]
    assert {"MolamID", "MerchantAPIKey"} <= set(spec["components"]["securitySchemes"])
    errors = spec["paths"]["/api/v1/events"]["post"]["responses"]
    assert "application/problem+json" in errors["422"]["content"]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    # The UI's assets come from this server (drf-spectacular-sidecar), not a CDN.
    assert b"cdn.jsdelivr" not in docs.content
    assert b"/static/drf_spectacular_sidecar/" in docs.content


@pytest.mark.parametrize(
    "member_json",
    ['"u\\ud800"', '"u\\udfff x"'],
    ids=["high", "low"],
)
def test_unpaired_surrogates_are_400(api, funded, member_json):
    client = api("system")
    body = (
        f'{{"program_id": "{funded.pk}", "member_id": {member_json}, "type": "purchase", '
        '"amount": "100", "currency": "XOF", "metadata": {"k": "\\ud800"}}'
    )
    response = client.post("/api/v1/events", body, key="s1")
    assert_problem(response, 400, "malformed_request")
    assert LedgerEntry.objects.count() == 1


def test_surrogate_pairs_are_fine(api, funded):
    client = api("system")
    body = (
        f'{{"program_id": "{funded.pk}", "member_id": "u_emoji", "type": "purchase", '
        '"amount": "100", "currency": "XOF", "metadata": {"note": "\\ud83d\\ude00"}}'
    )
    response = client.post("/api/v1/events", body, key="s2")
    assert response.status_code == 201
    assert LedgerEntry.objects.get(balance__member_id="u_emoji").metadata == {"note": "\U0001f600"}


def test_415_and_406_are_answered_and_documented(api, funded):
    client = api("system")
    refused = client.post("/api/v1/redemptions", "a=b", content_type="text/plain")
    assert_problem(refused, 415, "unsupported_media_type")
    xml = client.get("/api/v1/programs", headers={"Accept": "application/xml"})
    assert xml.status_code == 406
    spec = client.get("/api/schema/?format=json").json()
    assert "415" in spec["paths"]["/api/v1/redemptions"]["post"]["responses"]
    assert "406" in spec["paths"]["/api/v1/programs"]["get"]["responses"]


def test_a_text_the_database_driver_cannot_encode_is_a_400_not_a_500(rf):
    """Validation keeps lone surrogates out; should one slip through to a query, psycopg's
    UnicodeEncodeError is the client's bad value (400 invalid_value), as a DataError is."""
    from django.db import connection

    from access.problems import problem_exception_handler

    with pytest.raises(UnicodeEncodeError) as raised, connection.cursor() as cursor:
        cursor.execute("SELECT %s", ["a\ud800"])
    response = problem_exception_handler(raised.value, {"request": rf.get("/api/v1/programs")})
    assert (response.status_code, response.data["code"]) == (400, "invalid_value")
