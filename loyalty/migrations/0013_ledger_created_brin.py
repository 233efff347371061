# A ledger entry was inserted into a btree on (program, type, created_at) that no query of the
# product reads in order: member histories and the admin list go by id (the balance and
# primary key indexes), and time ranges across a program (finance reports) scan by date. As
# created_at only grows, every writer of one program inserted at that index's one rightmost
# leaf, which serialised a busy program's writers on that page. Time ranges now go through a
# BRIN index on created_at (entries are appended in time order: a few pages for millions of
# rows, untouched by an insert until its range is summarised), as the audit log's do. On
# SQLite (development, tests) there is no BRIN and no index is created.

from django.db import migrations

BRIN = "ledger_entry_created_brin"


def create_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f'CREATE INDEX "{BRIN}" ON "loyalty_ledgerentry" USING brin ("created_at")'
        )


def drop_brin(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f'DROP INDEX IF EXISTS "{BRIN}"')


class Migration(migrations.Migration):
    dependencies = [("loyalty", "0012_sira_settings_strict_numbers")]

    operations = [
        migrations.RemoveIndex(model_name="ledgerentry", name="loyalty_led_program_135818_idx"),
        migrations.RunPython(create_brin, drop_brin),
    ]
