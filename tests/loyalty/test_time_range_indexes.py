"""Time ranges over the ledger and the audit log (reports, the audit search, the admin's date
filters) read BRIN indexes on PostgreSQL: an insert costs them nothing, and a range query
does not scan the whole table."""

import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


@pytest.mark.parametrize(
    ("table", "index"),
    [
        ("loyalty_ledgerentry", "ledger_entry_created_brin"),
        ("audit_auditentry", "audit_entry_created_brin"),
    ],
)
def test_a_time_range_reads_the_brin_index(table, index):
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a near-empty table: force the choice
        cursor.execute(
            f"EXPLAIN SELECT count(*) FROM {table}"  # noqa: S608 (a fixed table name)
            " WHERE created_at >= now() - interval '1 day' AND created_at < now()"
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index in plan, plan
