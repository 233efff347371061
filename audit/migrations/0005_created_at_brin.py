# Every audited write inserts into each of the audit table's indexes. The btree on
# `created_at` is only ever read for ranges (the API search's `since` / `until`, the admin's
# date filter), never for order (both list newest first by id). Entries are appended in time
# order (created_at is the writer's clock, so concurrent writers interleave by milliseconds at
# most), which is what a BRIN index needs: it stores one summary per range of table blocks,
# a few pages for millions of rows, and an insert does not touch it until the range is
# summarised. On SQLite (development, tests) there is no BRIN and no index is created.

from django.db import migrations

BRIN = "audit_entry_created_brin"


def create_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f'CREATE INDEX "{BRIN}" ON "audit_auditentry" USING brin ("created_at")'
        )


def drop_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'DROP INDEX IF EXISTS "{BRIN}"')


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0004_credential_id'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='auditentry',
            name='audit_audit_created_81b39b_idx',
        ),
        migrations.RunPython(create_brin, drop_brin),
    ]
