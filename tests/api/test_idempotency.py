"""HTTP idempotency: replay, reuse with another body, in progress, scope, retention, races."""

from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.http.response import HttpResponseBase
from django.utils import timezone

from access.idempotency import KeyGuard, idempotency_records_purge
from access.models import IdempotencyRecord
from audit.models import AuditEntry
from loyalty.models import LedgerEntry, Redemption
from tests.parallel import run_parallel

from .conftest import OTHER, OWN

pytestmark = pytest.mark.django_db


# Tests of the event's own transaction run twice: inside the test's transaction, and in a
# transaction of their own, as in production, where an earning's BEGIN and COMMIT travel in a
# pipeline with its statements (loyalty.services.ingestion.service._earn_pipelined).
TRANSACTIONS = pytest.mark.parametrize(
    "own_transaction",
    [
        pytest.param(False, id="in-test-transaction"),
        pytest.param(
            True,
            id="own-transaction",
            marks=[pytest.mark.postgres, pytest.mark.django_db(transaction=True)],
        ),
    ],
)


def purchase(program, member="u_7", amount="12500"):
    return {
        "program_id": str(program.pk),
        "member_id": member,
        "type": "purchase",
        "amount": amount,
        "currency": "XOF",
        "reference": "order-991",
    }


def replayed_as_sent(first, again) -> None:
    """A replay answers the first answer's very bytes (stored as sent), status and type."""
    assert "Idempotent-Replayed" not in first
    assert again["Idempotent-Replayed"] == "true"
    assert (again.status_code, again["Content-Type"], again.content) == (
        first.status_code,
        first["Content-Type"],
        first.content,
    )


def test_same_key_same_body_replays_without_writing(api, funded):
    client = api("system")
    first = client.post("/api/v1/events", purchase(funded), key="order-991")
    entries, audits = LedgerEntry.objects.count(), AuditEntry.objects.count()
    # Key order and spacing do not matter: the body is compared as JSON.
    again = client.post(
        "/api/v1/events", dict(reversed(list(purchase(funded).items()))), key="order-991"
    )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert (LedgerEntry.objects.count(), AuditEntry.objects.count()) == (entries, audits)


def test_same_key_other_body_is_422_and_changes_nothing(api, funded):
    client = api("system")
    assert client.post("/api/v1/events", purchase(funded), key="k1").status_code == 201
    entries = LedgerEntry.objects.count()
    response = client.post("/api/v1/events", purchase(funded, amount="99999"), key="k1")
    assert response.status_code == 422
    assert response.json()["code"] == "idempotency_key_reused"
    assert response["Content-Type"] == "application/problem+json"
    assert LedgerEntry.objects.count() == entries


def test_same_key_on_another_endpoint_is_reuse(api, funded):
    client = api("system")
    assert client.post("/api/v1/events", purchase(funded), key="k2").status_code == 201
    response = client.post(
        "/api/v1/redemptions",
        {
            "program_id": str(funded.pk),
            "member_id": "u_1",
            "points": "10",
            "reward_type": "discount",
        },
        key="k2",
    )
    assert response.json()["code"] == "idempotency_key_reused"
    assert Redemption.objects.count() == 0


def test_key_still_running_is_409(api, funded):
    client = api("system")
    now = timezone.now()
    IdempotencyRecord.objects.create(
        scope=f"merchant:{OWN}", key="busy", method="POST", path="/api/v1/events",
        request_hash="x" * 64, status="in_progress", created_at=now,
        locked_until=now + timedelta(minutes=2), expires_at=now + timedelta(hours=48),
    )  # fmt: skip
    response = client.post("/api/v1/events", purchase(funded), key="busy")
    assert response.status_code in (409, 422)
    # Same fingerprint as the running request: the answer is "in progress".
    record = IdempotencyRecord.objects.get(key="busy")
    client.post("/api/v1/events", purchase(funded), key="probe")
    record.request_hash = IdempotencyRecord.objects.get(key="probe").request_hash
    record.save(update_fields=["request_hash"])
    response = client.post("/api/v1/events", purchase(funded), key="busy")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_in_progress"
    assert response["Retry-After"] == "1"


def test_abandoned_claim_is_taken_over_after_its_lock(api, funded):
    client = api("system")
    now = timezone.now()
    IdempotencyRecord.objects.create(
        scope=f"merchant:{OWN}", key="dead", method="POST", path="/api/v1/events",
        request_hash="0" * 64, status="in_progress", created_at=now,
        locked_until=now + timedelta(seconds=120), expires_at=now + timedelta(hours=48),
    )  # fmt: skip
    with time_machine.travel(now + timedelta(seconds=121)):
        response = client.post("/api/v1/events", purchase(funded), key="dead")
    assert response.status_code == 201
    assert IdempotencyRecord.objects.get(key="dead").status == "completed"


def test_missing_or_bad_key_is_400_and_nothing_written(api, funded):
    client = api("system")
    response = client.post("/api/v1/events", purchase(funded), key=False)
    assert response.status_code == 400
    assert response.json()["code"] == "idempotency_key_missing"
    response = client.post("/api/v1/events", purchase(funded), key="has space")
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]
    assert LedgerEntry.objects.filter(balance__member_id="u_7").count() == 0


def test_validation_failure_is_not_stored(api, funded):
    client = api("system")
    bad = {**purchase(funded), "amount": "12.5"}  # XOF has no minor unit
    assert client.post("/api/v1/events", bad, key="retry-me").status_code == 400
    assert not IdempotencyRecord.objects.filter(key="retry-me").exists()
    assert client.post("/api/v1/events", purchase(funded), key="retry-me").status_code == 201


def test_business_refusal_is_stored_and_replayed(api, funded):
    client = api("system")
    body = {"program_id": str(funded.pk), "member_id": "u_1", "points": "999999",
            "reward_type": "discount"}  # fmt: skip
    first = client.post("/api/v1/redemptions", body, key="too-much")
    again = client.post("/api/v1/redemptions", body, key="too-much")
    assert first.status_code == again.status_code == 422
    assert again.json() == first.json()
    assert again.json()["code"] == "insufficient_points"
    assert again["Content-Type"] == "application/problem+json"
    assert again["Idempotent-Replayed"] == "true"
    replayed_as_sent(first, again)


@TRANSACTIONS
def test_an_event_replays_the_bytes_it_first_answered(api, make_program, own_transaction):
    """Stored as sent, by the event's own transaction: what DRF's JSON escapes (U+2028) and
    what it writes as it is (non-ASCII) come back byte for byte."""
    program = make_program(merchant_id=OWN)
    client = api("system")
    body = purchase(program, member="u_\u00e9\u2028")
    first = client.post("/api/v1/events", body, key="bytes")
    assert first.status_code == 201
    assert "\u00e9".encode() in first.content
    assert b"\\u2028" in first.content
    assert bytes(IdempotencyRecord.objects.get(key="bytes").response_bytes) == first.content
    replayed_as_sent(first, client.post("/api/v1/events", body, key="bytes"))


def test_an_answer_drf_renders_replays_its_bytes(api, funded):
    """A hold's 201 is a plain DRF Response (times and decimals through DRF's encoder): it is
    stored as DRF's JSONRenderer writes it, which is what was sent."""
    client = api("system")
    body = {"program_id": str(funded.pk), "member_id": "u_1", "points": "150",
            "reward_type": "discount"}  # fmt: skip
    first = client.post("/api/v1/redemptions", body, key="hold-bytes")
    assert first.status_code == 201
    assert bytes(IdempotencyRecord.objects.get(key="hold-bytes").response_bytes) == first.content
    replayed_as_sent(first, client.post("/api/v1/redemptions", body, key="hold-bytes"))


def test_a_stored_409_replays_its_bytes(api, pending_hold):
    client = api("system")
    assert client.post(f"/api/v1/redemptions/{pending_hold.pk}/release").status_code == 200
    capture = f"/api/v1/redemptions/{pending_hold.pk}/capture"
    first = client.post(capture, key="late-capture")
    assert (first.status_code, first.json()["code"]) == (409, "invalid_state")
    assert first["Content-Type"] == "application/problem+json"
    replayed_as_sent(first, client.post(capture, key="late-capture"))


def test_keys_are_scoped_per_merchant(api, funded, make_program):
    other_program = make_program(merchant_id=OTHER)
    own = api("system", merchant_id=OWN).post("/api/v1/events", purchase(funded), key="shared")
    other = api("system", merchant_id=OTHER).post(
        "/api/v1/events", purchase(other_program), key="shared"
    )
    assert own.status_code == other.status_code == 201
    assert "Idempotent-Replayed" not in other


def test_records_are_kept_at_least_24_hours_then_expire(api, funded):
    client = api("system")
    client.post("/api/v1/events", purchase(funded), key="old")
    record = IdempotencyRecord.objects.get(key="old")
    assert record.expires_at - record.created_at >= timedelta(hours=24)
    with time_machine.travel(timezone.now() + timedelta(hours=23)):
        # A fresh token: the first one expired meanwhile.
        replay = api("system").post("/api/v1/events", purchase(funded), key="old")
    assert replay["Idempotent-Replayed"] == "true"
    with time_machine.travel(record.expires_at + timedelta(seconds=1)):
        # The HTTP record is gone; the ledger's own key still answers the first result.
        late = api("system").post("/api/v1/events", purchase(funded), key="old")
    assert late.status_code == 201
    assert late.json()["transaction_id"] == replay.json()["transaction_id"]
    assert LedgerEntry.objects.filter(balance__member_id="u_7").count() == 1


HOUR = timedelta(hours=1)

# What a resend may change without being the same event any more: each part of the award
# (the module SIRA scores) or of the record (reason, time, metadata).
OTHER_EVENT = pytest.mark.parametrize(
    "change",
    [
        pytest.param({"module": "shop"}, id="module"),
        pytest.param({"occurred_at": "2026-11-27T10:00:01Z"}, id="occurred_at"),
        pytest.param({"metadata": {"channel": "web"}}, id="metadata"),
        pytest.param({"reason": "another reason"}, id="reason"),
    ],
)


def full_purchase(program, **change):
    body = {
        **purchase(program),
        "module": "eats",
        "occurred_at": "2026-11-27T10:00:00Z",
        "metadata": {"channel": "app", "basket": [1, 2]},
        "reason": "weekend order",
    }
    return {**body, **change}


@OTHER_EVENT
def test_once_the_record_expired_the_ledger_key_refuses_another_event(api, funded, change):
    first = api("system").post("/api/v1/events", full_purchase(funded), key="late-1")
    assert first.status_code == 201
    with time_machine.travel(IdempotencyRecord.objects.get(key="late-1").expires_at + HOUR):
        assert idempotency_records_purge() == 1  # the ledger's key is all that is left
        other = api("system").post("/api/v1/events", full_purchase(funded, **change), key="late-1")
    # Keys and order of the metadata, and the time's offset, are not a change.
    with time_machine.travel(IdempotencyRecord.objects.get(key="late-1").expires_at + HOUR):
        assert idempotency_records_purge() == 1  # the refusal's record, kept 48 hours
        same = api("system").post(
            "/api/v1/events",
            full_purchase(
                funded,
                metadata={"basket": [1, 2], "channel": "app"},
                occurred_at="2026-11-27T11:00:00+01:00",
            ),
            key="late-1",
        )
    assert other.status_code == 422, other.content
    assert other.json()["code"] == "idempotency_key_reused"
    assert same.status_code == 201
    assert same.json()["transaction_id"] == first.json()["transaction_id"]
    assert LedgerEntry.objects.filter(balance__member_id="u_7").count() == 1


@OTHER_EVENT
def test_a_batch_item_repeating_a_key_for_another_event_is_refused(api, funded, change):
    client = api("system")
    item = {**full_purchase(funded), "idempotency_key": "item-1"}
    first = client.post("/api/v1/events/batch", {"events": [item]})
    assert first.json()["results"][0]["status"] == 201
    again = client.post(
        "/api/v1/events/batch",
        {
            "events": [
                {**item, **change},
                item,
                {**item, "metadata": {"basket": [1, 2], "channel": "app"}},
            ]
        },
    )
    other, same, reordered = again.json()["results"]
    assert other["status"] == 422
    assert other["error"]["code"] == "idempotency_key_reused"
    for repeat in (same, reordered):
        assert repeat["replayed"] is True
        assert repeat["body"] == first.json()["results"][0]["body"]
    # Two items of one batch: the second repeats the first, written in the same request.
    both = client.post(
        "/api/v1/events/batch",
        {
            "events": [
                {**item, "idempotency_key": "item-2"},
                {**item, **change, "idempotency_key": "item-2"},
            ]
        },
    )
    assert [r["status"] for r in both.json()["results"]] == [201, 422]
    assert LedgerEntry.objects.filter(balance__member_id="u_7").count() == 2


@pytest.mark.postgres  # the ledger's append-only trigger is switched off to write the former
@pytest.mark.django_db(transaction=True)
def test_an_entry_stored_with_the_former_fingerprint_replays_its_repeat(api, funded):
    """Entries written before the fingerprint covered module, reason, time and metadata keep
    their repeats replayed, as they were then."""
    client = api("system")
    item = {**full_purchase(funded), "idempotency_key": "legacy-1"}
    first = client.post("/api/v1/events/batch", {"events": [item]}).json()["results"][0]
    entry = LedgerEntry.objects.get(idempotency_key="legacy-1")
    assert entry.details["fingerprint"] != former_fingerprint(entry)
    entry.details["fingerprint"] = former_fingerprint(entry)
    with connection.cursor() as cursor:  # the ledger's rows cannot be updated: as stored then
        cursor.execute("ALTER TABLE loyalty_ledgerentry DISABLE TRIGGER USER")
        LedgerEntry.objects.filter(pk=entry.pk).update(details=entry.details)
        cursor.execute("ALTER TABLE loyalty_ledgerentry ENABLE TRIGGER USER")
    again = client.post("/api/v1/events/batch", {"events": [{**item, "module": "shop"}]})
    assert again.json()["results"][0]["replayed"] is True
    assert again.json()["results"][0]["body"] == first["body"]


def former_fingerprint(entry) -> str:
    from loyalty.services.ingestion import EventInput

    return EventInput(
        type=entry.type,
        member_id=entry.details["member_id"],
        idempotency_key=entry.idempotency_key,
        amount=entry.amount,
        currency=entry.currency,
        reference=entry.reference,
    ).former_fingerprint()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_same_key_requests_write_once(api, make_program):
    program = make_program(merchant_id=OWN)
    clients = [api("system") for _ in range(12)]

    results = run_parallel(
        len(clients), lambda i: clients[i].post("/api/v1/events", purchase(program), key="race-1")
    )

    assert all(isinstance(r, HttpResponseBase) for r in results), results
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {201, 409}, statuses
    assert statuses.count(201) >= 1
    bodies = [r.json()["transaction_id"] for r in results if r.status_code == 201]
    assert len(set(bodies)) == 1  # every success names the same transaction
    assert LedgerEntry.objects.filter(balance__member_id="u_7").count() == 1
    assert IdempotencyRecord.objects.get(key="race-1").status == "completed"


def test_expired_records_are_purged_and_fresh_ones_kept(api, funded):
    from django_celery_beat.models import PeriodicTask

    from access.tasks import idempotency_purge_task

    client = api("system")
    client.post("/api/v1/events", purchase(funded), key="old-one")
    with time_machine.travel(timezone.now() + timedelta(hours=49)):
        api("system").post("/api/v1/events", purchase(funded, member="u_8"), key="new-one")
        assert idempotency_purge_task() == 1
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["new-one"]
    assert PeriodicTask.objects.get(task="access.idempotency_purge").enabled


def test_numbers_are_compared_exactly(api, funded):
    client = api("system")
    body = (
        '{"program_id": "%s", "member_id": "u_9", "type": "referral", "points": %s, "reason": "r"}'
    )

    def send(points):
        return client.post("/api/v1/events", body % (funded.pk, points), key="num-1")

    assert send("100").status_code == 201
    assert send("100.00")["Idempotent-Replayed"] == "true"  # the same number
    reused = send("100.000000000000000001")  # equal as a float, not as a decimal
    assert (reused.status_code, reused.json()["code"]) == (422, "idempotency_key_reused")
    assert LedgerEntry.objects.filter(balance__member_id="u_9").count() == 1


@TRANSACTIONS
def test_an_event_and_its_stored_answer_commit_together(
    api, make_program, monkeypatch, own_transaction
):
    """The 201 is stored by the event's own transaction: completed with the very body sent,
    replayed as is; and when that transaction fails, neither the event nor an answer stays."""
    from loyalty.api import events

    assert connection.in_atomic_block is not own_transaction

    program = make_program(merchant_id=OWN)
    client = api("system")
    first = client.post("/api/v1/events", purchase(program), key="together")
    assert first.status_code == 201
    record = IdempotencyRecord.objects.get(key="together")
    assert record.status == IdempotencyRecord.Status.COMPLETED
    assert (record.response_status, bytes(record.response_bytes)) == (201, first.content)
    again = client.post("/api/v1/events", purchase(program), key="together")
    replayed_as_sent(first, again)

    def broken(record, response):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(events, "idempotency_complete", broken)  # the claimed path (SQLite)
    monkeypatch.setattr(KeyGuard, "record_insert", broken)  # the guarded one
    entries = LedgerEntry.objects.count()
    with pytest.raises(RuntimeError):
        client.post("/api/v1/events", purchase(program, member="u_8"), key="fails")
    assert LedgerEntry.objects.count() == entries
    assert not IdempotencyRecord.objects.filter(key="fails").exists()  # released: retry may
    monkeypatch.undo()
    assert (
        client.post("/api/v1/events", purchase(program, member="u_8"), key="fails").status_code
        == 201
    )


@TRANSACTIONS
def test_an_event_no_single_budget_shard_can_pay_takes_the_guarded_path(
    api, make_program, monkeypatch, own_transaction
):
    """100 points against 16 shards of 62.5: the one-statement path writes nothing, the
    guarded retry pays across shards; one entry, one stored answer, budget exact."""
    from decimal import Decimal

    from loyalty.services.budget import budget_spent
    from loyalty.services.ingestion import service

    assert connection.in_atomic_block is not own_transaction
    tries = []

    def spy(name, function):
        def called(*args, **kwargs):
            tries.append(name)
            return function(*args, **kwargs)

        monkeypatch.setattr(service, function.__name__, called)

    spy("one statement", service._earn_pipelined)
    spy("guarded", service.ingest_in_transaction)
    program = make_program(merchant_id=OWN, budget_limit=Decimal("1000"))
    response = api("system").post("/api/v1/events", purchase(program, amount="5000"), key="b1")
    assert response.status_code == 201, response.content
    assert response.json()["points"] == "100.00"
    assert LedgerEntry.objects.filter(program=program).count() == 1
    assert budget_spent(program=program) == Decimal("100")
    record = IdempotencyRecord.objects.get(key="b1")
    assert (record.status, bytes(record.response_bytes)) == ("completed", response.content)
    # The one-statement path, then the guarded one (SQLite has only the latter's ORM path).
    # On PostgreSQL the request first takes the key-guarded one-statement path, which leaves
    # a refused budget to the claimed path's tries.
    expected = (
        ["one statement"] * 2 + ["guarded"] if connection.vendor == "postgresql" else ["guarded"]
    )
    assert tries == expected


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_claim_alone_commits_without_waiting_for_its_flush(api, make_program):
    """The claim's own transaction (autocommit) does not wait for its WAL flush; the
    redemption's transaction, which stores the answer, and everything after it still do."""
    program = make_program(merchant_id=OWN)
    client = api("system")
    assert client.post("/api/v1/events", purchase(program), key="funds").status_code == 201
    seen: list[tuple[str, str]] = []

    def spy(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if not sql.startswith("SHOW"):
            kind = "claim" if "ON CONFLICT" in sql and "idempotency" in sql else "other"
            if kind == "other" and connection.in_atomic_block:
                seen.append(("event transaction", _synchronous_commit()))
            elif kind == "claim":
                seen.append(("claim", sql))
        return result

    with connection.execute_wrapper(spy):
        response = client.post(
            "/api/v1/redemptions",
            {
                "program_id": str(program.pk),
                "member_id": "u_7",
                "points": "10",
                "reward_type": "discount",
            },
            key="flush-1",
        )
    assert response.status_code == 201, response.content
    claim_sql = next(value for kind, value in seen if kind == "claim")
    assert "set_config('synchronous_commit', 'off', true)" in claim_sql
    assert {value for kind, value in seen if kind == "event transaction"} == {"on"}
    assert _synchronous_commit() == "on"  # local to the claim's transaction


@pytest.mark.postgres
def test_a_claim_inside_a_transaction_leaves_its_commit_synchronous(funded):
    """Inside a caller's transaction the setting would cover all of it: not set there."""
    from django.db import transaction

    from access.idempotency import idempotency_claim

    with transaction.atomic():
        record, replay = idempotency_claim(
            scope=f"merchant:{OWN}", key="in-tx", fingerprint="f" * 64, method="POST",
            path="/api/v1/events", credential_id="jwt:user-1",
        )  # fmt: skip
        assert (record.pk is not None, replay) == (True, False)
        assert _synchronous_commit() == "on"


@pytest.mark.postgres
def test_the_claim_statement_turns_off_the_flush_wait_of_its_own_transaction(funded):
    """What the autocommit claim does to its transaction, seen from inside one (the test's),
    for the statement that also reads the program."""
    from django.db import connections

    from access.idempotency import idempotency_claim
    from access.scoping import program_lookup

    caller = type("C", (), {"merchant_id": OWN})()
    wrapper = connections["default"]
    wrapper.in_atomic_block = False  # as in autocommit, inside the test's transaction
    try:
        record, _ = idempotency_claim(
            scope=f"merchant:{OWN}", key="async-1", fingerprint="f" * 64, method="POST",
            path="/api/v1/events", credential_id="jwt:user-1",
            also=program_lookup(caller, funded.pk),
        )  # fmt: skip
    finally:
        wrapper.in_atomic_block = True
    assert record.prefetched == funded
    assert _synchronous_commit() == "off"


def test_another_body_that_writes_a_number_as_an_object_is_not_a_replay(api, funded):
    client = api("system", merchant_id=None)
    base = {"program_id": str(funded.pk), "member_id": "u_1", "type": "purchase",
            "amount": "100", "currency": "XOF"}  # fmt: skip
    first = client.post("/api/v1/events", {**base, "metadata": {"table": 7}}, key="k-fp")
    assert first.status_code == 201
    again = client.post("/api/v1/events", {**base, "metadata": {"table": {"#": "7"}}}, key="k-fp")
    assert (again.status_code, again.json()["code"]) == (422, "idempotency_key_reused")
    assert "Idempotent-Replayed" not in again.headers


def test_an_event_key_cannot_take_an_adjustments_ledger_key(api, funded):
    """POST .../adjustments keys its entry `adjustment:<key>`: an event sent under such a key
    would otherwise answer, or refuse, the staff's adjustment with that key."""
    client = api("system", merchant_id=None)
    adjust = {"program_id": str(funded.pk), "member_id": "u_1", "type": "manual_adjust",
              "points": "25", "reason": "goodwill"}  # fmt: skip
    single = client.post("/api/v1/events", adjust, key="adjustment:fix-1")
    assert (single.status_code, single.json()["code"]) == (400, "validation_error")
    assert "Idempotency-Key" in single.json()["errors"]
    batch = client.post(
        "/api/v1/events/batch", {"events": [{**adjust, "idempotency_key": "adjustment:fix-1"}]}
    )
    item = batch.json()["results"][0]
    assert (item["status"], list(item["error"]["errors"])) == (400, ["idempotency_key"])

    staff = client.post(
        f"/api/v1/programs/{funded.pk}/members/u_1/adjustments",
        {"points": "25", "reason": "goodwill"},
        key="fix-1",
    )
    assert staff.status_code == 201
    assert "Idempotent-Replayed" not in staff.headers
    # A platform person's key is digested with their scope (test_adjustment_and_hold_keys.py).
    assert LedgerEntry.objects.get(type="manual_adjust").idempotency_key.startswith("adjustment:")


@pytest.mark.parametrize("prefix", ["campaign:", "expiry:", "redemption:"])
def test_an_event_key_cannot_take_a_key_the_engine_writes(api, funded, prefix):
    client = api("system", merchant_id=None)
    body = {"program_id": str(funded.pk), "member_id": "u_1", "type": "referral",
            "points": "1", "reason": "r"}  # fmt: skip
    response = client.post("/api/v1/events", body, key=f"{prefix}{funded.pk}:u_1")
    assert (response.status_code, response.json()["code"]) == (400, "validation_error")


def test_a_voucher_redeem_retried_with_its_code_in_the_other_case_replays(api, active_voucher):
    """A voucher's code names it in either case (the path converter): a retry of the same
    redemption under the same key, spelling the code otherwise, is the same request."""
    from loyalty.models import Voucher

    client = api("system")
    code = active_voucher.code
    first = client.post(f"/api/v1/vouchers/{code.lower()}/redeem", key="redeem-1")
    assert first.status_code == 200, first.json()
    retry = client.post(f"/api/v1/vouchers/{code}/redeem", key="redeem-1")
    assert retry.status_code == 200, retry.json()
    assert retry["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert Voucher.objects.get(pk=active_voucher.pk).status == Voucher.Status.REDEEMED
    # Another voucher under that key is still another request.
    other = client.post("/api/v1/vouchers/MLY-NOSUCHCODE/redeem", key="redeem-1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


def test_a_hold_repeated_after_its_record_expired_answers_the_redemption_as_it_stands(api, funded):
    """docs/API.md: past the HTTP record, the ledger's key answers a redemption's repeat with
    the redemption it made as it now stands, and holds nothing more."""
    client = api("system")
    body = {"program_id": str(funded.pk), "member_id": "u_1", "points": "100",
            "reward_type": "discount", "capture": False}  # fmt: skip
    first = client.post("/api/v1/redemptions", body, key="hold-9")
    assert first.status_code == 201
    assert first.json()["status"] == "pending"
    captured = client.post(f"/api/v1/redemptions/{first.json()['id']}/capture")
    assert captured.status_code == 200
    IdempotencyRecord.objects.filter(key="hold-9").delete()  # its time is over
    repeat = client.post("/api/v1/redemptions", body, key="hold-9")
    assert repeat.status_code == 201
    assert repeat["Idempotent-Replayed"] == "true"
    assert repeat.json() == captured.json()
    assert Redemption.objects.filter(program=funded).count() == 1
