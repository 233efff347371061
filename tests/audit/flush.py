"""Lets the test database flush truncate the audit tables, and nothing else can.

pytest-django's transactional tests empty every table with one TRUNCATE at teardown, which
the audit tables' append-only triggers refuse. Production offers no escape from them (no
session variable: see audit.models), so the flush does what only a table owner can do: it
disables the TRUNCATE triggers, truncates, and re-enables them, all inside the flush's own
transaction, so the triggers are never off outside it.
"""

import pytest
from django.db.backends.postgresql.operations import DatabaseOperations

from audit.models import AuditEntry, AuditSeal


def _guarded_tables() -> list[tuple[str, str]]:
    pairs = []
    for model in (AuditEntry, AuditSeal):
        for trigger in model._meta.triggers:
            if "TRUNCATE" in str(trigger.operation):
                pairs.append((model._meta.db_table, trigger.get_pgid(model)))
    return pairs


@pytest.fixture(autouse=True, scope="session")
def audit_tables_flushable():
    original = DatabaseOperations.execute_sql_flush
    guarded = _guarded_tables()

    def execute_sql_flush(self, sql_list):
        flushed = [(t, p) for t, p in guarded if any(t in sql for sql in sql_list)]
        if flushed:
            disable = [f"ALTER TABLE {self.quote_name(t)} DISABLE TRIGGER {p}" for t, p in flushed]
            enable = [f"ALTER TABLE {self.quote_name(t)} ENABLE TRIGGER {p}" for t, p in flushed]
            sql_list = [*disable, *sql_list, *enable]
        return original(self, sql_list)

    DatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    DatabaseOperations.execute_sql_flush = original
