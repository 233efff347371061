"""Sealed digests over finished transactions, and audit_verify naming what was tampered with.

Sealing needs committed data (a seal never covers a running transaction), so these tests
commit for real (`transaction=True`)."""

import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from audit.models import AuditEntry, AuditSeal
from audit.services import audit_record, audit_seal
from audit.verify import audit_verify
from loyalty.actors import Actor
from tests.parallel import JOIN_TIMEOUT

pytestmark = pytest.mark.django_db(transaction=True)

ACTOR = Actor(id="ops-1", role="ops_marketing", ip="10.0.0.1")


def record(n: int = 1, **kw):
    return [
        audit_record(
            actor=ACTOR, action="program.update", entity_type="program", entity_id=f"p{i}",
            after={"i": i, **kw},
        )
        for i in range(n)
    ]  # fmt: skip


def seal_all() -> list[AuditSeal]:
    seals = []
    while (seal := audit_seal()) is not None:
        seals.append(seal)
    return seals


def behind_the_triggers_back(sql: str, params: list) -> None:
    """What only the table owner can do: switch the triggers off, change a row, switch on."""
    table = AuditEntry._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")


def test_seals_chain_and_cover_every_entry_once():
    with transaction.atomic():
        record(3)
    first = seal_all()
    with transaction.atomic():
        record(2)
    second = seal_all()
    assert [s.entry_count for s in first + second] == [3, 2]
    assert second[0].prev_digest == first[0].digest
    assert second[0].lo == first[0].hi
    assert audit_seal() is None  # nothing new
    assert audit_verify() == []
    call_command("audit_verify")


def test_seal_size_is_capped_and_the_rest_follows():
    with transaction.atomic():
        record(3)
    with transaction.atomic():
        record(3)
    first = audit_seal(max_entries=4)
    rest = seal_all()
    # A transaction's entries are never split: the cap stops before the second transaction
    # on PostgreSQL (txid basis) and at the fifth id on SQLite.
    assert first.entry_count in (3, 4)
    assert first.entry_count + sum(s.entry_count for s in rest) == 6
    assert audit_verify() == []


@pytest.mark.postgres
def test_a_running_transaction_is_never_sealed_and_is_sealed_once_it_commits():
    """The hot-row-free design's key property: an entry with a lower id that commits after a
    seal was taken must still be covered by a later seal, never missed."""
    inserted, release = threading.Event(), threading.Event()

    def slow_writer():
        try:
            with transaction.atomic():
                record(1, who="slow")
                inserted.set()
                release.wait(10)
        finally:
            connection.close()

    thread = threading.Thread(target=slow_writer, daemon=True)
    thread.start()
    assert inserted.wait(10)
    with transaction.atomic():
        record(2, who="fast")  # higher ids, committed first
    early = seal_all()
    sealed_ids = {e.pk for s in early for e in _covered(s)}
    assert all(e.changes["after"]["who"] == "fast" for e in AuditEntry.objects.filter(
        pk__in=sealed_ids))  # fmt: skip
    release.set()
    thread.join(JOIN_TIMEOUT)
    assert not thread.is_alive(), "the slow writer did not finish"
    seal_all()
    covered = [e.pk for s in AuditSeal.objects.all() for e in _covered(s)]
    assert sorted(covered) == sorted(AuditEntry.objects.values_list("pk", flat=True))
    assert sum(AuditSeal.objects.values_list("entry_count", flat=True)) == 3
    assert audit_verify() == []


@pytest.mark.postgres
def test_concurrent_writers_and_sealer_leave_a_complete_verifiable_trail():
    errors = []

    def writer(n):
        try:
            for _ in range(15):
                with transaction.atomic():
                    record(2, writer=n)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    def sealer(stop):
        try:
            while not stop.is_set():
                audit_seal()
        finally:
            connection.close()

    stop = threading.Event()
    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(4)]
    seal_thread = threading.Thread(target=sealer, args=(stop,), daemon=True)
    seal_thread.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN_TIMEOUT)
    stop.set()
    seal_thread.join(JOIN_TIMEOUT)
    stuck = [t for t in [*threads, seal_thread] if t.is_alive()]
    assert stuck == [], "a writer or the sealer did not finish: deadlock or lock wait"
    assert errors == []
    seal_all()
    assert sum(AuditSeal.objects.values_list("entry_count", flat=True)) == 120
    assert AuditEntry.objects.count() == 120
    assert audit_verify() == []


def test_verify_names_the_first_altered_entry_and_the_command_fails():
    with transaction.atomic():
        entries = record(4)
    seal_all()
    victim = entries[1]
    table = AuditEntry._meta.db_table
    behind_the_triggers_back(
        f"UPDATE {table} SET actor_id = %s WHERE id = %s",  # noqa: S608
        ["someone-else", victim.pk],
    )
    findings = audit_verify()
    assert findings[0].kind == "entry_altered"
    assert findings[0].entry_id == victim.pk
    with pytest.raises(CommandError) as excinfo:
        call_command("audit_verify")
    assert "finding" in str(excinfo.value)


def test_verify_catches_an_unsealed_entry_altered_too():
    with transaction.atomic():
        entries = record(2)
    table = AuditEntry._meta.db_table
    behind_the_triggers_back(
        f"UPDATE {table} SET changes = %s WHERE id = %s",  # noqa: S608
        ['{"after": {"i": 99}}', entries[0].pk],
    )
    assert [(f.kind, f.entry_id) for f in audit_verify()] == [("entry_altered", entries[0].pk)]


def test_verify_catches_a_removed_entry_through_its_seal():
    with transaction.atomic():
        entries = record(3)
    (seal,) = seal_all()
    table = AuditEntry._meta.db_table
    behind_the_triggers_back(f"DELETE FROM {table} WHERE id = %s", [entries[1].pk])  # noqa: S608
    findings = audit_verify()
    assert [f.kind for f in findings] == ["seal_mismatch"]
    assert findings[0].seal_seq == seal.seq
    assert "3 entries, 2 are there now" in findings[0].message


def test_verify_catches_a_forged_entry_with_a_made_up_digest():
    with transaction.atomic():
        record(1)
    seal_all()
    with transaction.atomic():
        forged = AuditEntry.objects.create(
            entity_type="balance", entity_id="1", action="balance.unfreeze", actor_id="ops-1",
            actor_role="finance_ops", changes={}, created_at="2026-11-27T10:00:00Z",
            digest="a" * 64,
        )  # fmt: skip
    assert [(f.kind, f.entry_id) for f in audit_verify()] == [("entry_altered", forged.pk)]


def _covered(seal: AuditSeal):
    key = "txid" if seal.basis == "txid" else "id"
    return AuditEntry.objects.filter(**{f"{key}__gte": seal.lo, f"{key}__lt": seal.hi})


@pytest.mark.postgres
def test_deleted_newest_seals_sealed_again_show_against_an_anchor_kept_outside(caplog):
    """A database owner deletes an entry, the seal over it and every seal after, and lets
    the seal job seal the gap again: the chain is whole, so only a seal recorded outside the
    database (the seal job's log, or what `audit_verify` printed) can show it."""
    seals = []
    with caplog.at_level("INFO", logger="audit.services"):
        for _ in range(4):
            with transaction.atomic():
                record(1)
            seals += seal_all()  # one seal per entry
    assert len(seals) == 4
    newest = seals[-1]
    assert f"audit.seal seq={newest.seq} digest={newest.digest}" in caplog.text
    out = io.StringIO()
    call_command("audit_verify", stdout=out)
    assert f"--anchor {newest.seq}:{newest.digest}" in out.getvalue()

    removed = AuditEntry.objects.order_by("id")[1]
    with transaction.atomic(), connection.cursor() as cursor:
        for table in (AuditEntry._meta.db_table, AuditSeal._meta.db_table):
            cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        cursor.execute(f"DELETE FROM {AuditEntry._meta.db_table} WHERE id = %s", [removed.pk])  # noqa: S608
        cursor.execute(f"DELETE FROM {AuditSeal._meta.db_table} WHERE seq >= %s", [2])  # noqa: S608
        for table in (AuditEntry._meta.db_table, AuditSeal._meta.db_table):
            cursor.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
    seal_all()
    assert audit_verify() == []  # what the database alone shows

    findings = audit_verify(anchors=((newest.seq, newest.digest),))
    assert [f.kind for f in findings] == ["anchor_missing"]
    with pytest.raises(CommandError):
        call_command(
            "audit_verify", "--anchor", f"{newest.seq}:{newest.digest}", stderr=io.StringIO()
        )


@pytest.mark.postgres
def test_verify_checks_an_entry_moved_out_of_every_sealed_range():
    """A txid below zero is in no seal's range: its entry is checked like an unsealed one."""
    with transaction.atomic():
        (entry,) = record(1)
    seal_all()
    table = AuditEntry._meta.db_table
    behind_the_triggers_back(
        f"UPDATE {table} SET txid = -1, actor_id = 'someone-else' WHERE id = %s",  # noqa: S608
        [entry.pk],
    )
    kinds = {(f.kind, f.entry_id) for f in audit_verify()}
    assert ("entry_altered", entry.pk) in kinds


@pytest.mark.postgres
def test_verify_checks_an_entry_whose_txid_was_nulled():
    """Its table's owner may also drop the column's NOT NULL: a NULL txid is in no range
    either, nor ever sealed, and is checked like an unsealed entry."""
    with transaction.atomic():
        (entry,) = record(1)
    table = AuditEntry._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} ALTER COLUMN txid DROP NOT NULL")
    try:
        behind_the_triggers_back(
            f"UPDATE {table} SET txid = NULL, actor_id = 'someone-else' WHERE id = %s",  # noqa: S608
            [entry.pk],
        )
        kinds = {(f.kind, f.entry_id) for f in audit_verify()}
        assert ("entry_altered", entry.pk) in kinds
    finally:
        behind_the_triggers_back(f"DELETE FROM {table} WHERE txid IS NULL", [])  # noqa: S608
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table} ALTER COLUMN txid SET NOT NULL")


def test_verify_names_a_genuine_entry_copied_in_even_once_sealed():
    with transaction.atomic():
        (entry,) = record(1)
    seal_all()
    columns = (
        "entity_type, entity_id, action, merchant_id, actor_id, actor_role, ip, user_agent,"
        " credential_id, changes, created_at, digest"
    )
    table = AuditEntry._meta.db_table
    with connection.cursor() as cursor:  # an INSERT: no trigger stands in the way
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table} WHERE id = %s",  # noqa: S608
            [entry.pk],
        )
    seal_all()  # the copy is sealed as if it were genuine
    copy = AuditEntry.objects.exclude(pk=entry.pk).get()
    findings = audit_verify()
    assert [(f.kind, f.entry_id) for f in findings] == [("entry_copied", copy.pk)]
    assert f"entries {entry.pk}, {copy.pk}" in findings[0].message


@pytest.mark.parametrize("limit", ["0", "-3", "ten"])
def test_a_limit_that_shows_no_finding_is_refused_not_an_ok(limit):
    """With room for no finding, an altered trail came back clean: OK, exit 0."""
    with transaction.atomic():
        (entry,) = record(1)
    behind_the_triggers_back(
        f"UPDATE {AuditEntry._meta.db_table} SET actor_id = 'someone-else' WHERE id = %s",  # noqa: S608
        [entry.pk],
    )
    with pytest.raises(CommandError, match="--limit"):
        call_command("audit_verify", "--limit", limit, stdout=io.StringIO())
