"""What the published OpenAPI schema says of headers, the API key scheme and request bodies is
what the API does (issue 3: accurate for every endpoint, error response and auth scheme)."""

import inspect
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from access.models import IdempotencyRecord
from loyalty.api.base import LoyaltyApi
from loyalty.api.serializers import StrictInput

from .conftest import OWN
from .test_auth import make_key
from .test_ledger_api import event

pytestmark = pytest.mark.django_db


@pytest.fixture
def spec(client):
    return client.get("/api/schema/?format=json").json()


def operations(spec):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if path.startswith("/api/v1/") and isinstance(operation, dict):
                yield path, method, operation


def test_every_401_and_every_idempotent_answer_declare_the_headers_sent(spec):
    writes = 0
    for path, method, operation in operations(spec):
        responses = operation["responses"]
        assert "WWW-Authenticate" in responses["401"].get("headers", {}), (path, method)
        names = {p["name"] for p in operation.get("parameters", [])}
        if "Idempotency-Key" in names:
            writes += 1
            for status, response in responses.items():
                if status[0] == "2" or status in ("409", "422"):
                    assert "Idempotent-Replayed" in response.get("headers", {}), (path, status)
            assert "Retry-After" in responses["409"]["headers"], path
    assert writes >= 15


def test_the_declared_headers_are_the_ones_sent(api, funded, spec):
    client = api("system")
    client.post("/api/v1/events", event(funded), key="order-1")
    replay = client.post("/api/v1/events", event(funded), key="order-1")
    assert replay.status_code == 201
    assert replay["Idempotent-Replayed"] == "true"
    declared = spec["paths"]["/api/v1/events"]["post"]["responses"]["201"]["headers"]
    assert declared["Idempotent-Replayed"]["schema"]["enum"] == ["true"]

    anonymous = Client().get("/api/v1/programs")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"].startswith("Bearer ")

    now = timezone.now()
    record = IdempotencyRecord.objects.get(key="order-1")
    IdempotencyRecord.objects.create(
        scope=record.scope, key="busy", method="POST", path="/api/v1/events",
        request_hash=record.request_hash, status="in_progress", created_at=now,
        locked_until=now + timedelta(minutes=2), expires_at=now + timedelta(hours=48),
    )  # fmt: skip
    running = client.post("/api/v1/events", event(funded), key="busy")
    assert running.status_code == 409
    assert int(running["Retry-After"]) >= 0


def test_the_api_key_scheme_used_as_declared_authenticates(funded, spec):
    _, key = make_key(permissions=("programs:read",))
    scheme = spec["components"]["securitySchemes"]["MerchantAPIKey"]
    assert (scheme["type"], scheme["in"]) == ("apiKey", "header")
    # What an OpenAPI client sends: the key itself as the declared header's value.
    response = Client().get("/api/v1/programs", headers={scheme["name"]: key})
    assert response.status_code == 200, response.json()
    assert [p["merchant_id"] for p in response.json()["results"]] == [OWN]


@pytest.mark.parametrize(
    ("component", "field", "path", "body"),
    [
        ("AdjustmentInputRequest", "reason", "/api/v1/programs/{pid}/members/u_1/adjustments",
         {"points": "1", "reason": ""}),
        ("ProgramCreateRequest", "name", "/api/v1/programs",
         {"name": "", "currency": "XOF", "earn_rate": "0.02", "point_value": "1"}),
        ("CampaignCreateRequest", "name", "/api/v1/campaigns",
         {"program_id": "{pid}", "name": "", "segment": "all", "bonus_points": "10",
          "scheduled_at": "2030-01-01T00:00:00Z"}),
    ],
)  # fmt: skip
def test_a_required_text_the_api_refuses_blank_is_declared_non_empty(
    api, funded, spec, component, field, path, body
):
    assert spec["components"]["schemas"][component]["properties"][field]["minLength"] == 1
    body = {k: v.format(pid=funded.pk) if isinstance(v, str) else v for k, v in body.items()}
    response = api("system").post(path.format(pid=funded.pk), body)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_no_description_is_a_base_classs_docstring(spec):
    """How the code is built (the base view's, the strict input's docstring) is not what an
    endpoint or a body is."""
    inherited = {inspect.cleandoc(cls.__doc__) for cls in (LoyaltyApi, StrictInput)}
    for path, method, operation in operations(spec):
        assert inspect.cleandoc(operation.get("description", "")) not in inherited, (path, method)
    for name, component in spec["components"]["schemas"].items():
        assert inspect.cleandoc(component.get("description", "")) not in inherited, name


def test_a_decimal_sent_as_a_json_number_is_declared_and_read_exactly(api, funded, spec):
    """The API reads `"points": 200` as "200.00": a request's decimal is declared as a string
    or a number, an answer's as the string it always is."""
    schemas = spec["components"]["schemas"]
    points = schemas["RedemptionInputRequest"]["properties"]["points"]
    assert [variant["type"] for variant in points["oneOf"]] == ["string", "number"]
    assert schemas["Redemption"]["properties"]["points"]["type"] == "string"
    response = api("system").post(
        "/api/v1/redemptions",
        {"program_id": str(funded.pk), "member_id": "u_1", "points": 200,
         "reward_type": "discount", "capture": False},
    )  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["points"] == "200.00"
