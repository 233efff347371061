"""The ledger's invariants, checked in SQL over every member (`manage.py loyalty_verify`).

Differences are compared after ROUND(, 2): exact on PostgreSQL's NUMERIC, and it absorbs
SQLite's floating-point SUM in development.

- points_balance == sum(ledger entries.points)
- locked == sum(points of pending redemptions)
- sum(open lot remaining) == max(points_balance, 0)
- the program's budget shards never spend past their allocation
- a limited program's shards allocate no more than max(limit, total spent): the limit, or
  only what is already spent once the limit was lowered below it (no room)
"""

from dataclasses import dataclass

from django.db import connection

CHECKS = {
    "balance_vs_ledger": """
        SELECT b.id, b.member_id, b.program_id, b.points_balance,
               COALESCE(e.total, 0) AS expected
        FROM loyalty_memberbalance b
        LEFT JOIN (SELECT balance_id, SUM(points) AS total FROM loyalty_ledgerentry
                   GROUP BY balance_id) e ON e.balance_id = b.id
        WHERE ROUND(b.points_balance - COALESCE(e.total, 0), 2) <> 0
    """,
    "locked_vs_holds": """
        SELECT b.id, b.member_id, b.program_id, b.locked, COALESCE(r.total, 0) AS expected
        FROM loyalty_memberbalance b
        LEFT JOIN (SELECT balance_id, SUM(points) AS total FROM loyalty_redemption
                   WHERE status = 'pending' GROUP BY balance_id) r ON r.balance_id = b.id
        WHERE ROUND(b.locked - COALESCE(r.total, 0), 2) <> 0
    """,
    "lots_vs_balance": """
        SELECT b.id, b.member_id, b.program_id, COALESCE(l.total, 0) AS lots,
               CASE WHEN b.points_balance > 0 THEN b.points_balance ELSE 0 END AS expected
        FROM loyalty_memberbalance b
        LEFT JOIN (SELECT balance_id, SUM(remaining) AS total FROM loyalty_pointlot
                   GROUP BY balance_id) l ON l.balance_id = b.id
        WHERE ROUND(COALESCE(l.total, 0)
              - CASE WHEN b.points_balance > 0 THEN b.points_balance ELSE 0 END, 2) <> 0
    """,
    "balance_after_chain": """
        SELECT e.balance_id, e.id, e.balance_after, e.running
        FROM (SELECT balance_id, id, balance_after,
                     SUM(points) OVER (PARTITION BY balance_id ORDER BY id) AS running
              FROM loyalty_ledgerentry) e
        WHERE ROUND(e.balance_after - e.running, 2) <> 0
    """,
    "budget_overspent": """
        SELECT program_id, shard, allocated, spent FROM loyalty_budgetshard
        WHERE allocated IS NOT NULL AND spent > allocated
    """,
    "budget_overallocated": """
        SELECT p.id, p.budget_limit, s.allocated, s.spent
        FROM loyalty_program p
        JOIN (SELECT program_id, SUM(allocated) AS allocated, SUM(spent) AS spent
              FROM loyalty_budgetshard WHERE allocated IS NOT NULL
              GROUP BY program_id) s ON s.program_id = p.id
        WHERE p.budget_limit IS NOT NULL
          AND ROUND(s.allocated - CASE WHEN p.budget_limit > s.spent THEN p.budget_limit
                                       ELSE s.spent END, 2) > 0
    """,
}


@dataclass
class Mismatch:
    check: str
    row: tuple


def ledger_verify(*, limit: int = 100) -> list[Mismatch]:
    """Every invariant violation (up to `limit` per check); empty when the ledger is sound."""
    found: list[Mismatch] = []
    with connection.cursor() as cursor:
        for name, sql in CHECKS.items():
            cursor.execute(f"{sql} LIMIT %s", [limit])
            found.extend(Mismatch(check=name, row=row) for row in cursor.fetchall())
    return found
