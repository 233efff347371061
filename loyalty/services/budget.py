"""A program's budget as sharded counters, so awards of one program do not queue on one row.

Lock order: a member's balance row first, then budget shards in shard order. The fast path
locks one random shard with SKIP LOCKED and never waits; only the slow path (no single shard
can pay) waits, and it takes every shard in order, so two slow paths cannot deadlock.
"""

from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Sum

from ..errors import BudgetExhausted, LedgerLimitExceeded
from ..models import BudgetShard, LedgerEntry, Program
from ..money import LEDGER_LIMIT, ZERO, money_floor, points_affordable, points_cost
from .balances import db_id

# The most a shard's `spent` (NUMERIC(20,2)) can hold. A budget without a limit still counts
# its spending: a charge goes to a shard with room for it, and past the room of every shard
# it is refused (ledger_limit_exceeded) rather than failing on the column.
SPENT_MAX = LEDGER_LIMIT - Decimal("0.01")
_UNLIMITED_WITH_ROOM = "allocated IS NULL AND spent <= %s"


def budget_shards_create(*, program: Program) -> None:
    shards = settings.LOYALTY_BUDGET_SHARDS
    BudgetShard.objects.bulk_create(
        BudgetShard(program=program, shard=i, allocated=None) for i in range(shards)
    )
    if program.budget_limit is not None:
        budget_set_limit(program=program, limit=program.budget_limit)


def budget_spent(*, program: Program) -> Decimal:
    """What the program has spent: `spent_total` when `with_budget_spent` read it, else one SUM."""
    total = getattr(program, "spent_total", None)
    if total is None:
        total = BudgetShard.objects.filter(program=program).aggregate(s=Sum("spent"))["s"]
    # Quantized to the column's two places: SQLite returns a SUM unquantized ("0" for "0.00").
    return ZERO if total is None else total.quantize(ZERO)


def with_budget_spent(programs):
    """`programs` with each one's spent budget summed in the same query (`spent_total`), for
    lists: one query per page rather than one per program."""
    return programs.annotate(spent_total=Sum("budget_shards__spent"))


def budget_set_limit(*, program: Program, limit: Decimal | None) -> None:
    """Spreads what is left of `limit` evenly over the shards (locks every shard, in order)."""
    shards = _lock_all(program)
    if limit is None:
        for shard in shards:
            shard.allocated = None
    else:
        _rebalance(
            shards,
            remaining=max(limit - sum(s.spent for s in shards), ZERO),
            currency=program.currency,
        )
    BudgetShard.objects.bulk_update(shards, ["allocated"])


def _rebalance(shards: list[BudgetShard], *, remaining: Decimal, currency: str) -> None:
    share = money_floor(remaining / len(shards), currency)
    for shard in shards:
        shard.allocated = shard.spent + share
    # The rounding remainder goes to the first shard, so the shares add up exactly.
    shards[0].allocated += remaining - share * len(shards)


class BudgetRetry(Exception):
    """A charge made without a savepoint (`budget_charge_statement`) found no free shard that
    could pay. Its transaction may hold a shard lock out of order (see `_add_to_one_shard`),
    so it must not go on to the slow path: the caller rolls the whole transaction back and
    runs it again with `budget_charge`."""


def budget_charge(*, program: Program, points: Decimal, allow_partial: bool = True) -> Decimal:
    """Charges the cost of `points` to the budget; returns the points it could pay for.

    Raises BudgetExhausted when nothing (or, without `allow_partial`, not all) can be paid.
    """
    cost = points_cost(points, point_value=program.point_value, currency=program.currency)
    if program.budget_limit is None:
        # No limit: spending is only counted; any free shard with room will do. In a
        # savepoint: a shard a concurrent charge filled is locked, then turned away by the
        # re-check of the room, and that lock must not stay held (see `_add_to_one_shard`).
        # Every shard busy or short of room: the shards in order below, never one by one in
        # random order (a wait for a shard then turned away would hold it while waiting for
        # the next: a deadlock with `_lock_all`). `allocated IS NULL` still holds unless a
        # limit was set after `program` was read: then the limited path below decides.
        if _add_to_one_shard(program, cost, condition=_UNLIMITED_WITH_ROOM, param=SPENT_MAX - cost):
            return points
    elif _add_to_one_shard(program, cost, condition="allocated >= spent + %s", param=cost):
        return points
    return _charge_across_shards(program=program, points=points, allow_partial=allow_partial)


# Plain SQL: the ORM spends more CPU building this statement than PostgreSQL running it.
_ADD_TO_ONE_SHARD_SQL = """
    UPDATE loyalty_budgetshard SET spent = spent + %s
    WHERE id = (SELECT id FROM loyalty_budgetshard WHERE program_id = %s AND {condition}
                ORDER BY random() LIMIT 1 {lock})
"""


# `_ADD_TO_ONE_SHARD_SQL` for a data-modifying CTE, the chosen shard joined rather than
# compared with a sub-select: inside a CTE, when the chosen shard had been updated by a
# transaction that committed after the statement began, PostgreSQL's re-check of the updated
# row picked again and compared it with another shard, so nothing was paid (~1 % of events
# at 4-16 concurrent writers, each then retried on the guarded path; measured with the
# statement alone in a CTE, 8 threads: 36 misses in 3,200, and none joined).
_ADD_TO_ONE_SHARD_CTE_SQL = """
    UPDATE loyalty_budgetshard b SET spent = b.spent + %s
    FROM (SELECT id FROM loyalty_budgetshard WHERE program_id = %s AND {condition}
          ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED) AS chosen
    WHERE b.id = chosen.id
    RETURNING b.id
"""


def budget_charge_statement(*, program: Program, points: Decimal) -> tuple[str, list]:
    """`budget_charge`'s fast path as an `UPDATE ... RETURNING id` for a caller to run inside
    its own statement (a data-modifying CTE; PostgreSQL): one free shard pays the whole cost
    of `points`, or no row comes back: the caller must then roll its transaction back and
    retry with `budget_charge` (BudgetRetry), as a shard may have been locked out of order."""
    cost = points_cost(points, point_value=program.point_value, currency=program.currency)
    if program.budget_limit is None:
        condition, extra = _UNLIMITED_WITH_ROOM, [SPENT_MAX - cost]
    else:
        condition, extra = "allocated >= spent + %s", [cost]
    return _ADD_TO_ONE_SHARD_CTE_SQL.format(condition=condition), [
        cost,
        db_id(program.pk),
        *extra,
    ]


def _add_to_one_shard(
    program: Program,
    delta: Decimal,
    *,
    condition: str = "TRUE",
    param: Decimal | None = None,
) -> bool:
    """Adds `delta` to `spent` of one random shard of the program meeting `condition`, in one
    statement; only a shard no one holds (SKIP LOCKED): it never waits. False when no
    candidate was free.

    It runs in a savepoint that is rolled back when nothing was paid. In READ COMMITTED, a
    shard that a concurrent charge updated and committed is locked first and then rejected by
    the re-check of the candidate filter, and that lock stays held: the slow path would then
    wait for every shard in order while holding one out of order, and two such transactions
    deadlock. Rolling back the savepoint frees the stray lock.
    """
    lock = ""
    if connection.features.has_select_for_update:  # not SQLite: one writer at a time anyway
        lock = "FOR UPDATE SKIP LOCKED"
    sql = _ADD_TO_ONE_SHARD_SQL.format(condition=condition, lock=lock)
    params = [delta, db_id(program.pk)] + ([] if param is None else [param])
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        paid = cursor.rowcount
        if not paid:
            transaction.set_rollback(True)
    return bool(paid)


def _charge_across_shards(*, program: Program, points: Decimal, allow_partial: bool) -> Decimal:
    shards = _lock_all(program)
    if shards[0].allocated is None:  # no limit: every shard busy or short of room for it all
        cost = points_cost(points, point_value=program.point_value, currency=program.currency)
        if cost > sum((SPENT_MAX - s.spent for s in shards), ZERO):
            raise LedgerLimitExceeded(program_id=str(program.pk))
        _consolidate(shards, delta=cost, remaining=None, currency=program.currency)
        return points
    remaining = sum((s.allocated - s.spent for s in shards), ZERO)
    affordable = min(points, points_affordable(remaining, point_value=program.point_value))
    if affordable <= 0 or (affordable < points and not allow_partial):
        raise BudgetExhausted(remaining_budget=str(remaining), currency=program.currency)
    cost = points_cost(affordable, point_value=program.point_value, currency=program.currency)
    _consolidate(shards, delta=cost, remaining=remaining - cost, currency=program.currency)
    return affordable


def _lock_all(program: Program) -> list[BudgetShard]:
    return list(BudgetShard.objects.select_for_update().filter(program=program).order_by("shard"))


def _consolidate(
    shards: list[BudgetShard], *, delta: Decimal, remaining: Decimal | None, currency: str
) -> None:
    """Moves all spending (plus `delta`) to the first shard (to the first ones, each up to
    SPENT_MAX, past what one can hold) and re-spreads what is left of the limit evenly, so
    the one-shard fast path works again after a slow-path charge."""
    left = max(sum((s.spent for s in shards), ZERO) + delta, ZERO)
    for shard in shards:
        shard.spent = min(left, SPENT_MAX)
        left -= shard.spent
    if remaining is not None:
        _rebalance(shards, remaining=max(remaining, ZERO), currency=currency)
    BudgetShard.objects.bulk_update(shards, ["allocated", "spent"])


def budget_credit(*, program: Program, cost: Decimal) -> Decimal:
    """Gives `cost` back to the budget; returns what it gave back: never more than is spent,
    and never room past the limit (what is left stays max(limit - spent, 0)).

    `cost` is what was charged for the points taken back, at the point value of their award
    (`award_point_value`), not today's: a credit at a raised point value would give back
    more than was ever charged.
    """
    if cost <= 0:
        return ZERO
    # Over its limit, a budget's shards are all full (`budget_set_limit` left each at its
    # spending, and nothing adds room until spending is back under the limit): a shard with
    # room shows the budget is not over it, so lowering that shard's spending alone leaves
    # the total allocated at the limit. Otherwise lowering one shard's spending would make
    # room the limit does not allow: the slow path lowers the allocation with it.
    room_or_unlimited = "spent >= %s AND (allocated IS NULL OR allocated > spent)"
    if _add_to_one_shard(program, -cost, condition=room_or_unlimited, param=cost):
        return cost
    locked = _lock_all(program)
    # Read holding every shard: a limit change writes the program row and re-spreads the
    # shards in one transaction, so the limit committed now is the one the shards were spread
    # for (a change still in flight waits for these shards, then re-spreads from our spending).
    limit = Program.objects.filter(pk=program.pk).values_list("budget_limit", flat=True).get()
    spent = sum((s.spent for s in locked), ZERO)
    credited = min(cost, spent)
    remaining = None if limit is None else max(limit - (spent - credited), ZERO)
    _consolidate(locked, delta=-credited, remaining=remaining, currency=program.currency)
    return credited


def award_point_value(*, program: Program, entry: LedgerEntry) -> Decimal:
    """The point value an award's entry was charged at (`point_value` in its details, recorded
    by `earn_apply`). An entry written before that was recorded falls back to the program's
    current point value: after a change of it, its credit may then differ from its charge
    (never past the limit: `budget_credit` caps what is left at it)."""
    recorded = (entry.details or {}).get("point_value")
    return program.point_value if recorded is None else Decimal(recorded)
