"""The batch's answer is encoded once (orjson) for the response and its idempotent record:
it must be the JSON DRF's renderer gives, byte for byte, and a replay must answer the same."""

import json

import pytest
from rest_framework.renderers import JSONRenderer

from access.models import IdempotencyRecord
from loyalty.api.events import EncodedResponse

from .test_ledger_api import event

pytestmark = pytest.mark.django_db


def drf_rendered(data) -> bytes:
    return JSONRenderer().render(data)


@pytest.mark.parametrize(
    "data",
    [
        {"results": [{"index": 0, "status": 201, "replayed": False, "body": {"a": None}}]},
        {"text": 'é \u2028 \u2029 " \\ \n \x7f 😀', "list": [True, 1, -5, 2**63 - 1, None]},
        {"big": 10**30, "nested": {"k": ("t", 1)}},  # orjson refuses: json's path
    ],
)
def test_the_encoded_json_is_drfs(data):
    assert EncodedResponse(data).json_bytes == drf_rendered(data)


def test_a_batch_answers_drfs_json_and_its_replay_answers_the_same(api, funded):
    client = api("system")
    items = [
        {**event(funded, member_id="b\u2028é"), "idempotency_key": "b-1"},
        {**event(funded, member_id="b2", amount="oops"), "idempotency_key": "b-2"},
    ]
    first = client.post("/api/v1/events/batch", {"events": items}, key="batch-1")
    assert first.status_code == 200
    assert first["Content-Type"] == "application/json"
    assert first.content == drf_rendered(first.json())
    assert b"\\u2028" in first.content  # the member id, escaped as DRF escapes it
    again = client.post("/api/v1/events/batch", {"events": items}, key="batch-1")
    assert again.status_code == 200
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # Stored as sent, replayed as stored.
    record = IdempotencyRecord.objects.get(key="batch-1")
    assert bytes(record.response_bytes) == first.content
    assert (again["Content-Type"], again.content) == (first["Content-Type"], first.content)


def test_an_indented_answer_asked_for_goes_through_drf(api, funded):
    items = [{**event(funded, member_id="b1"), "idempotency_key": "b-1"}]
    response = api("system").post(
        "/api/v1/events/batch",
        {"events": items},
        headers={"Accept": "application/json; indent=2"},
    )
    assert response.status_code == 200
    assert response.content == json.dumps(response.json(), indent=2, ensure_ascii=False).encode()
