# A batch's stored answer (`response_body`, jsonb) is ~720 kB of text for 1,000 events, and
# PostgreSQL compresses a value that large before it stores it: with its default, pglz, that
# took ~5.5 ms of the server's CPU per batch (as long as parsing the JSON), lz4 ~0.2 ms for
# much the same size (66 kB either way). The column's compression only says how new values
# are stored: values already stored stay readable as they are, and every value reads back the
# same. PostgreSQL 14+ built with lz4 (as Debian's and the official images are) only; on any
# other server, and on SQLite, nothing changes.

from django.db import migrations

SET_COMPRESSION = (
    'ALTER TABLE "access_idempotencyrecord" ALTER COLUMN "response_body" SET COMPRESSION {}'
)


def _has_lz4(connection) -> bool:
    if connection.vendor != "postgresql" or connection.pg_version < 140000:
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
        row = cursor.fetchone()
    return bool(row and row[0])


def lz4(apps, schema_editor):
    if _has_lz4(schema_editor.connection):
        schema_editor.execute(SET_COMPRESSION.format("lz4"))


def default(apps, schema_editor):
    if _has_lz4(schema_editor.connection):
        schema_editor.execute(SET_COMPRESSION.format("default"))


class Migration(migrations.Migration):

    dependencies = [
        ('access', '0004_staff_subject_not_apikey'),
    ]

    operations = [
        migrations.RunPython(lz4, default),
    ]
