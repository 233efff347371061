"""A single earning over HTTP on PostgreSQL: its idempotency kept by a key guard (a
transaction-level advisory lock, the record inserted with the event) instead of a claim
committed ahead of it (access.idempotency.KeyGuard, EventsApi.guarded_write)."""

import threading
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from access.idempotency import KeyGuard, key_lock
from access.models import IdempotencyRecord
from loyalty.models import LedgerEntry, MemberBalance, Redemption
from tests.parallel import run_parallel

from .conftest import OTHER, OWN
from .test_idempotency import purchase, replayed_as_sent

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SCOPE = f"merchant:{OWN}"


def _other_session() -> psycopg.Connection:
    """A connection of its own, as another request's would be."""
    return psycopg.connect(**connection.get_connection_params())


def _key_lock(key: str) -> int:
    return key_lock(SCOPE, key)


def _hold_member_row(running: psycopg.Connection, program_pk, member_id: str = "u_7") -> None:
    running.execute(
        "SELECT 1 FROM loyalty_memberbalance WHERE program_id = %s AND member_id = %s FOR UPDATE",
        [program_pk, member_id],
    )


def _lock_wait_fails_fast() -> None:
    # A request that waited on a row lock would fail here instead of hanging the test.
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '2s'")


def test_a_single_event_takes_no_claim_and_stores_its_answer_with_the_event(api, make_program):
    program = make_program(merchant_id=OWN)
    client = api("system")
    statements: list[str] = []

    def spy(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        first = client.post("/api/v1/events", purchase(program), key="guarded-1")
    assert first.status_code == 201, first.content
    records = [sql for sql in statements if "access_idempotencyrecord" in sql]
    assert [sql for sql in records if "ON CONFLICT" in sql or sql.startswith("UPDATE")] == []
    assert [sql for sql in records if sql.startswith("INSERT")] != []
    record = IdempotencyRecord.objects.get(scope=SCOPE, key="guarded-1")
    assert record.status == IdempotencyRecord.Status.COMPLETED
    assert (record.response_status, bytes(record.response_bytes)) == (201, first.content)
    replayed_as_sent(first, client.post("/api/v1/events", purchase(program), key="guarded-1"))
    assert LedgerEntry.objects.filter(program=program).count() == 1
    # The key's lock ended with the request's transaction: free for any other session.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert cursor.fetchone()[0] == 0
    with _other_session() as other:
        assert other.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", [_key_lock("guarded-1")]
        ).fetchone()[0]


def test_a_claim_of_a_key_a_guarded_request_holds_is_409(api, make_program):
    """Another endpoint (the claimed path) with the key of a running guarded request: 409, as
    for a repeat of that request, and nothing written; once the key is free it runs."""
    program = make_program(merchant_id=OWN)
    client = api("system")
    assert client.post("/api/v1/events", purchase(program), key="funds").status_code == 201
    hold = {
        "program_id": str(program.pk),
        "member_id": "u_7",
        "points": "10",
        "reward_type": "discount",
    }
    with _other_session() as running:
        running.execute("SELECT pg_advisory_xact_lock(%s)", [_key_lock("shared-key")])
        response = client.post("/api/v1/redemptions", hold, key="shared-key")
        assert (response.status_code, response.json()["code"]) == (409, "idempotency_in_progress")
        running.rollback()
    assert not IdempotencyRecord.objects.filter(key="shared-key").exists()
    assert not Redemption.objects.filter(balance__program=program).exists()
    assert client.post("/api/v1/redemptions", hold, key="shared-key").status_code == 201


def test_a_repeat_is_answered_without_waiting_for_the_members_row(api, make_program):
    program = make_program(merchant_id=OWN)
    client = api("system")
    first = client.post("/api/v1/events", purchase(program), key="again")
    assert first.status_code == 201
    with _other_session() as running:
        _hold_member_row(running, program.pk)
        _lock_wait_fails_fast()
        replayed_as_sent(first, client.post("/api/v1/events", purchase(program), key="again"))
        running.rollback()


def test_a_key_a_running_request_holds_is_409_at_once_and_waits_on_no_row(api, make_program):
    """The running request holds the key's lock and the member's balance row: the repeat
    answers 409 without waiting for either, and writes nothing."""
    program = make_program(merchant_id=OWN)
    client = api("system")
    assert client.post("/api/v1/events", purchase(program), key="before").status_code == 201
    with _other_session() as running:
        running.execute("SELECT pg_advisory_xact_lock(%s)", [_key_lock("busy")])
        _hold_member_row(running, program.pk)
        _lock_wait_fails_fast()
        response = client.post("/api/v1/events", purchase(program), key="busy")
        assert (response.status_code, response.json()["code"]) == (409, "idempotency_in_progress")
        running.rollback()
    assert not IdempotencyRecord.objects.filter(key="busy").exists()  # not stored: retry may
    assert LedgerEntry.objects.filter(program=program).count() == 1
    assert client.post("/api/v1/events", purchase(program), key="busy").status_code == 201


def test_another_merchants_program_is_404_and_locks_nothing(api, make_program):
    theirs = make_program(merchant_id=OTHER)
    assert (
        api("system", merchant_id=OTHER)
        .post("/api/v1/events", purchase(theirs), key="theirs-1")
        .status_code
        == 201
    )
    with _other_session() as running:
        _hold_member_row(running, theirs.pk)
        _lock_wait_fails_fast()
        response = api("system").post("/api/v1/events", purchase(theirs), key="probe-1")
        assert (response.status_code, response.json()["code"]) == (404, "not_found")
        running.rollback()
    assert not IdempotencyRecord.objects.filter(scope=SCOPE).exists()
    assert LedgerEntry.objects.filter(program=theirs).count() == 1


def test_a_record_the_claimed_path_commits_meanwhile_wins(api, make_program, monkeypatch):
    """Between the guard's look at the key and its insert, another request (the claimed path)
    commits a record of the key: the insert fails the whole transaction, and the request
    answers what that record says."""
    program = make_program(merchant_id=OWN)
    real_resolve = KeyGuard.resolve

    def resolve_then_race(guard):
        program = real_resolve(guard)

        def commit_record():
            try:
                IdempotencyRecord.objects.create(
                    scope=guard.scope,
                    key=guard.key,
                    method="POST",
                    path=guard.path,
                    request_hash=guard.fingerprint,
                    status="completed",
                    response_status=201,
                    response_bytes=b'{"answered":"first"}',
                    response_content_type="application/json",
                    created_at=timezone.now(),
                    locked_until=timezone.now(),
                    expires_at=timezone.now() + timedelta(hours=48),
                )
            finally:
                connection.close()

        thread = threading.Thread(target=commit_record)
        thread.start()
        thread.join(10)
        return program

    monkeypatch.setattr(KeyGuard, "resolve", resolve_then_race)
    response = api("system").post("/api/v1/events", purchase(program), key="raced")
    assert response.status_code == 201
    assert response.content == b'{"answered":"first"}'
    assert response["Idempotent-Replayed"] == "true"
    assert LedgerEntry.objects.filter(program=program).count() == 0
    assert MemberBalance.objects.filter(program=program, member_id="u_7").count() == 0


def test_a_refusal_is_stored_and_replayed(api, make_program):
    program = make_program(merchant_id=OWN)
    client = api("system")
    assert client.post("/api/v1/events", purchase(program), key="funds").status_code == 201
    MemberBalance.objects.filter(program=program, member_id="u_7").update(is_frozen=True)
    body = purchase(program, amount="500")
    statements: list[str] = []

    def spy(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(spy):
        first = client.post("/api/v1/events", body, key="frozen-1")
    assert (first.status_code, first.json()["code"]) == (422, "account_frozen")
    # The answer is already sent: its record waits for its WAL flush like any commit.
    stores = [sql for sql in statements if "INSERT INTO" in sql and "idempotency" in sql]
    assert stores
    assert not any("synchronous_commit" in sql for sql in stores)
    record = IdempotencyRecord.objects.get(key="frozen-1")
    assert (record.response_status, bytes(record.response_bytes)) == (422, first.content)
    MemberBalance.objects.filter(program=program, member_id="u_7").update(is_frozen=False)
    replayed_as_sent(first, client.post("/api/v1/events", body, key="frozen-1"))
    assert LedgerEntry.objects.filter(program=program).count() == 1


def test_a_new_member_is_created_once_under_parallel_first_events(api, make_program):
    """Twelve first events of one new member, each with its own key, in parallel: each is
    written once, none waits forever, the balance is their sum."""
    program = make_program(merchant_id=OWN)
    clients = [api("system") for _ in range(12)]
    results = run_parallel(
        12,
        lambda i: clients[i].post(
            "/api/v1/events", purchase(program, member="u_new"), key=f"first-{i}"
        ),
    )
    assert [getattr(r, "status_code", r) for r in results] == [201] * 12
    balance = MemberBalance.objects.get(program=program, member_id="u_new")
    points = sum(entry.points for entry in LedgerEntry.objects.filter(balance=balance))
    assert balance.points_balance == points
    assert IdempotencyRecord.objects.filter(key__startswith="first-").count() == 12
