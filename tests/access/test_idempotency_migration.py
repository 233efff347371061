"""Migration 0006 adds the answers' bytes column beside the JSON one: answers stored as JSON
(before it, or by the previous release's processes while a deploy rolls out) replay the bytes
their replay sent before."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from rest_framework.renderers import JSONRenderer

from access.idempotency import replay_response
from access.models import IdempotencyRecord

JSON_ANSWER = "access", "0005_idempotency_body_lz4"
BYTES_ANSWER = "access", "0006_idempotency_body_bytes"

ANSWERS = {
    "event": (201, "", {"zz": "u_\u00e9\u2028", "points": "12.50", "a": [True, None, 1.5]}),
    "refusal": (
        422,
        "application/problem+json",
        {"type": "https://docs.molam.io/loyalty/problems/x", "status": 422, "code": "x"},
    ),
}


def migrate_to(target: tuple[str, str]):
    """The database migrated to `target`; the models as they were there."""
    executor = MigrationExecutor(connection)
    executor.migrate([target])
    return executor.loader.project_state([target]).apps.get_model("access", "IdempotencyRecord")


def compression() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attcompression FROM pg_attribute WHERE attname = 'response_bytes' "
            "AND attrelid = 'access_idempotencyrecord'::regclass"
        )
        return cursor.fetchone()[0]


@pytest.fixture
def at_json_answers():
    """The access app at 0005; every app back at its latest migration afterwards."""
    yield migrate_to(JSON_ANSWER)
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_a_stored_json_answer_replays_the_same_bytes_after_the_migration(at_json_answers):
    now = timezone.now()
    common = {
        "scope": "m_1",
        "method": "POST",
        "path": "/api/v1/events",
        "request_hash": "h",
        "created_at": now,
        "locked_until": now,
        "expires_at": now + timedelta(hours=48),
    }
    for key, (status, content_type, body) in ANSWERS.items():
        at_json_answers.objects.create(
            key=key, status="completed", completed_at=now, response_status=status,
            response_content_type=content_type, response_body=body, **common,
        )  # fmt: skip
    at_json_answers.objects.create(key="running", status="in_progress", **common)
    # A replay sent DRF's JSONRenderer over the JSON as the database gives it back (jsonb
    # orders keys its own way).
    sent = {
        record.key: JSONRenderer().render(record.response_body)
        for record in at_json_answers.objects.filter(status="completed")
    }

    migrate_to(BYTES_ANSWER)
    for key, (status, content_type, _) in ANSWERS.items():
        replay = replay_response(IdempotencyRecord.objects.get(key=key))
        assert (replay.status_code, replay["Content-Type"], replay.content) == (
            status,
            content_type or "application/json",
            sent[key],
        )
    running = IdempotencyRecord.objects.get(key="running")
    assert (running.response_bytes, running.response_body) == (None, None)
    if connection.vendor == "postgresql":
        assert compression() == "l"  # lz4, as the JSON column (0005)

    # Reversed: the bytes column goes, the JSON answers are as they were.
    reverted = migrate_to(JSON_ANSWER)
    assert {
        record.key: JSONRenderer().render(record.response_body)
        for record in reverted.objects.filter(status="completed")
    } == sent


def test_an_empty_stored_answer_replays_without_a_content_type():
    """As DRF's Response sends an empty body."""
    replay = replay_response(IdempotencyRecord(response_status=204, response_bytes=b""))
    assert (replay.status_code, replay.content, "Content-Type" in replay) == (204, b"", False)
    assert replay["Idempotent-Replayed"] == "true"
