"""The audit tables are append-only in PostgreSQL itself, for the application's own user."""

import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AuditEntry, AuditSeal
from audit.services import audit_record
from loyalty.actors import Actor

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

ACTOR = Actor(id="ops-1", role="ops_marketing")


@pytest.fixture
def entry():
    return audit_record(
        actor=ACTOR, action="program.create", entity_type="program", entity_id="p1",
        after={"name": "Eats"},
    )  # fmt: skip


def refused(sql_or_callable, params=None):
    def attempt():
        with transaction.atomic():
            if callable(sql_or_callable):
                sql_or_callable()
            else:
                with connection.cursor() as cursor:
                    cursor.execute(sql_or_callable, params)

    with pytest.raises(DatabaseError, match="append-only"):
        attempt()


def test_orm_update_save_and_delete_are_refused(entry):
    refused(lambda: AuditEntry.objects.filter(pk=entry.pk).update(action="program.delete"))
    entry.action = "program.delete"
    refused(lambda: entry.save(update_fields=["action"]))
    refused(lambda: AuditEntry.objects.filter(pk=entry.pk).delete())
    refused(entry.delete)
    assert AuditEntry.objects.get(pk=entry.pk).action == "program.create"


def test_raw_sql_update_delete_and_truncate_are_refused(entry):
    table = AuditEntry._meta.db_table
    refused(f"UPDATE {table} SET changes = '{{}}'::jsonb WHERE id = %s", [entry.pk])  # noqa: S608
    refused(f"DELETE FROM {table} WHERE id = %s", [entry.pk])  # noqa: S608
    refused(f"TRUNCATE {table}")
    refused(f"TRUNCATE {table} CASCADE")
    assert AuditEntry.objects.filter(pk=entry.pk, changes__after__name="Eats").exists()


def test_pgtrigger_ignore_session_variable_is_no_escape(entry):
    table = AuditEntry._meta.db_table
    pgids = [t.get_pgid(AuditEntry) for t in AuditEntry._meta.triggers]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('pgtrigger.ignore', %s, false)", ["{" + ",".join(pgids) + "}"]
        )
    try:
        refused(f"DELETE FROM {table} WHERE id = %s", [entry.pk])  # noqa: S608
        refused(f"TRUNCATE {table}")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET pgtrigger.ignore")
    assert AuditEntry.objects.filter(pk=entry.pk).exists()


def test_seals_are_append_only_too():
    seal = AuditSeal.objects.create(
        seq=1, basis="txid", lo=0, hi=10, entry_count=0, first_entry_id=0, last_entry_id=0,
        prev_digest="0" * 64, digest="f" * 64, created_at="2026-11-27T10:00:00Z",
    )  # fmt: skip
    table = AuditSeal._meta.db_table
    refused(lambda: AuditSeal.objects.filter(pk=seal.pk).update(digest="e" * 64))
    refused(lambda: AuditSeal.objects.filter(pk=seal.pk).delete())
    refused(f"TRUNCATE {table}")
    assert AuditSeal.objects.get(pk=seal.pk).digest == "f" * 64


def test_inserting_still_works_after_a_refusal(entry):
    refused(lambda: AuditEntry.objects.filter(pk=entry.pk).delete())
    audit_record(actor=ACTOR, action="program.update", entity_type="program", entity_id="p1")
    assert AuditEntry.objects.filter(entity_id="p1").count() == 2
