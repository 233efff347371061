# A stored answer is only ever replayed, never queried: new answers are stored as the bytes
# sent (bytea), so PostgreSQL no longer parses each into jsonb on every write (~700 bytes of
# JSON per event, ~714 kB per 1,000-event batch). lz4-compressed as the JSON column (0005).
#
# Only a column is added (a brief lock, no rewrite): answers stored as JSON stay where they
# are and replay from there, and the processes of the previous release, which write JSON,
# keep working while a deploy rolls out. A later release drops the JSON column once every
# record stored before this one has expired (LOYALTY_IDEMPOTENCY_TTL_HOURS).

import importlib

from django.db import migrations, models

compression = importlib.import_module("access.migrations.0005_idempotency_body_lz4")


def bytes_lz4(apps, schema_editor):
    if compression._has_lz4(schema_editor.connection):
        schema_editor.execute(
            'ALTER TABLE "access_idempotencyrecord" ALTER COLUMN "response_bytes" '
            "SET COMPRESSION lz4"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("access", "0005_idempotency_body_lz4"),
    ]

    operations = [
        migrations.AddField(
            model_name="idempotencyrecord",
            name="response_bytes",
            field=models.BinaryField(blank=True, null=True),
        ),
        migrations.RunPython(bytes_lz4, migrations.RunPython.noop),
    ]
