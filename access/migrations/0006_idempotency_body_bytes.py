# A stored answer (`response_body`) is only ever replayed, never queried: it becomes the bytes
# of the answer (bytea), so PostgreSQL no longer parses it into jsonb on every write (~700
# bytes of JSON per event, ~714 kB per 1,000-event batch). Each stored answer is converted to
# the bytes its replay sent until now (DRF's JSONRenderer over the stored JSON, compact UTF-8),
# so it replays the same. The new column is lz4-compressed as the old one was (0005).
#
# The answer moves through a new column (added, filled, the old one dropped, then renamed),
# which every database does the same way; reversed, the JSON is parsed back from the bytes.

import importlib
import json

from django.db import migrations, models
from rest_framework.renderers import JSONRenderer

compression = importlib.import_module("access.migrations.0005_idempotency_body_lz4")

CHUNK = 100  # rows per UPDATE: a batch's answer is ~700 kB, so a chunk holds ~70 MB at most


def _set_lz4(schema_editor, column: str) -> None:
    if compression._has_lz4(schema_editor.connection):
        schema_editor.execute(
            f'ALTER TABLE "access_idempotencyrecord" ALTER COLUMN "{column}" SET COMPRESSION lz4'
        )


def _convert(apps, source: str, target: str, convert) -> None:
    record = apps.get_model("access", "IdempotencyRecord")
    # In-progress records have no answer yet: only completed ones are converted.
    completed = record.objects.filter(status="completed").order_by("pk")
    ids = list(completed.values_list("pk", flat=True))
    for start in range(0, len(ids), CHUNK):
        rows = list(completed.filter(pk__in=ids[start : start + CHUNK]).only("pk", source))
        for row in rows:
            setattr(row, target, convert(getattr(row, source)))
        record.objects.bulk_update(rows, [target])


def json_to_bytes(apps, schema_editor):
    _set_lz4(schema_editor, "response_bytes")
    _convert(apps, "response_body", "response_bytes", JSONRenderer().render)


def bytes_to_json(apps, schema_editor):
    _set_lz4(schema_editor, "response_body")
    _convert(
        apps, "response_bytes", "response_body", lambda body: json.loads(bytes(body)) if body else None
    )


class Migration(migrations.Migration):

    dependencies = [
        ('access', '0005_idempotency_body_lz4'),
    ]

    operations = [
        migrations.AddField(
            model_name='idempotencyrecord',
            name='response_bytes',
            field=models.BinaryField(blank=True, null=True),
        ),
        migrations.RunPython(json_to_bytes, bytes_to_json),
        migrations.RemoveField(
            model_name='idempotencyrecord',
            name='response_body',
        ),
        migrations.RenameField(
            model_name='idempotencyrecord',
            old_name='response_bytes',
            new_name='response_body',
        ),
    ]
