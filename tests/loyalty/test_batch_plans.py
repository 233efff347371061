"""A batch finds its balances by index probes, whatever the size of the program.

A batch looks up to 1,000 members up in the balance table three times (creating the missing
ones, locking them, writing them back). At PostgreSQL's default price of a random page read,
the planner chose, for programs of some 20,000 to 100,000 members, to read every balance of
the table and hash them instead: twice the database time of the batch, growing with the
table. The application's connections price a page read as the cached, SSD-backed read it
is (settings: DB_RANDOM_PAGE_COST)."""

import pytest
from django.db import connection

from loyalty.services import batch
from loyalty.services.balances import balance_defaults

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

MEMBERS = 80_000
BATCH = 1_000


@pytest.fixture
def program_of_many_members(program):
    names, values = balance_defaults()
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO loyalty_memberbalance (program_id, member_id, tier, {', '.join(names)})"  # noqa: S608
            f" SELECT %s, 'm_' || n, 'basic', {', '.join(cast for cast, _ in values)}"
            " FROM generate_series(0, %s) AS n",
            [program.pk, *(value for _, value in values), MEMBERS - 1],
        )
        cursor.execute("ANALYZE loyalty_memberbalance")
    return program


def plan(sql: str, params: list) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_the_balances_of_a_batch_are_found_by_index_not_by_a_scan(program_of_many_members):
    program = program_of_many_members
    programs = {program.id.int: program}
    members = {(program.id.int, f"m_{n}") for n in range(0, MEMBERS, MEMBERS // BATCH)}
    arrays, _ = batch._members_arrays(programs, members)
    insert_sql, defaults = batch._balance_insert_sql()

    plans = {
        "lock": plan(batch._BALANCES_LOCK_SQL, arrays),
        "insert": plan(insert_sql, ['{"basic"}', *defaults, *arrays]),
    }

    for name, text in plans.items():
        scans_the_table = "Seq Scan on loyalty_memberbalance" in text
        probes_the_index = "balance_unique_member" in text
        assert not scans_the_table, f"{name}:\n{text}"
        assert probes_the_index, f"{name}:\n{text}"
