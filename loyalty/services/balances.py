"""Member balances and their point lots: the row lock every member write takes, and FIFO lots."""

import calendar
import functools
import weakref
import zoneinfo
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import timezone

from ..models import LedgerEntry, MemberBalance, PointLot, Program, Tier
from ..money import ZERO, fits_ledger

REFUND_DEBT_FLAG = "refund_debt"
# Flags that stop earning and redemptions while the program has fraud detection on.
BLOCKING_FRAUD_FLAGS = frozenset({"suspicious_activity", "manual_review", "chargeback_abuse"})


def program_local_date(program: Program, at: datetime | None = None) -> date:
    """The program's calendar day at `at` (default now): the day of "per day" limits."""
    return _local_date(program.timezone, at or timezone.now())


# Earning asks twice an event, mostly for the same few instants (a batch's one time, and the
# members' last purchases, stamped with such times): a cached answer costs 0.2 us, 0.8 not.
@functools.lru_cache(maxsize=4096)
def _local_date(zone: str, at: datetime) -> date:
    return timezone.localtime(at, zoneinfo.ZoneInfo(zone)).date()


# The hot path's one read: the member's row, locked, with its tier's earn multiplier. Plain
# SQL because building the same query with the ORM costs ~5x the CPU of running it, on every
# event. `FOR UPDATE OF b` locks the balance row only (no-op on SQLite, one writer anyway).
# The columns are named, not `b.*`: a prepared `SELECT *` fails ("cached plan must not change
# result type") in long-lived connections once a migration adds a column. (Column names come
# from the model, values are parameters.)
_BALANCE_COLUMNS = ", ".join(f'b."{f.column}"' for f in MemberBalance._meta.concrete_fields)
# The tier's multiplier and rank are subqueries, not a join: a lock that waited for a writer
# of the row re-reads the row as committed, and re-evaluates the subqueries for its tier; a
# join would keep the tier row it had read first, which no longer matches (a member moved up
# meanwhile read as "a tier the program no longer has", and earned x1).
_TIER_OF_BALANCE = " FROM loyalty_tier t WHERE t.program_id = b.program_id AND t.name = b.tier"
_BALANCE_LOCK_SQL = (
    f"SELECT {_BALANCE_COLUMNS},"  # noqa: S608
    f" (SELECT t.earn_multiplier{_TIER_OF_BALANCE}) AS tier_multiplier,"
    f" (SELECT t.rank{_TIER_OF_BALANCE}) AS tier_rank"
    " FROM loyalty_memberbalance b WHERE b.program_id = %s AND b.member_id = %s"
)


_BALANCE_FIELDS = MemberBalance._meta.concrete_fields
_BALANCE_ATTNAMES = [f.attname for f in _BALANCE_FIELDS]
_BALANCE_WIDTH = len(_BALANCE_FIELDS)
# Per database connection (they are per thread): the converters the ORM applies to the
# columns of a balance (JSON decoding; on SQLite also decimals, dates and booleans).
_balance_converters_of: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _balance_converters(conn) -> list:
    found = _balance_converters_of.get(conn)
    if found is None:
        found = []
        for pos, model_field in enumerate(_BALANCE_FIELDS):
            col = model_field.get_col(MemberBalance._meta.db_table)
            convs = conn.ops.get_db_converters(col) + col.get_db_converters(conn)
            if convs:
                found.append((pos, convs, col))
        _balance_converters_of[conn] = found
    return found


def balance_from_row(conn, row) -> MemberBalance:
    """The MemberBalance of a row whose first columns are `_BALANCE_COLUMNS`, decoded exactly
    as the ORM decodes them (what a RawQuerySet does, for a fifth of its CPU: this is on
    every event's path)."""
    values = list(row[:_BALANCE_WIDTH])
    for pos, convs, col in _balance_converters(conn):
        value = values[pos]
        for convert in convs:
            value = convert(value, col, conn)
        values[pos] = value
    return MemberBalance.from_db(conn.alias, _BALANCE_ATTNAMES, values)


def db_id(uuid_pk) -> object:
    """A UUID primary key as the database stores it (uuid on PostgreSQL, hex on SQLite)."""
    return Program._meta.pk.get_db_prep_value(uuid_pk, connection)


_serial_sequences: dict[str, str] = {}


def serial_sequence(model) -> str:
    """The sequence of `model`'s auto id (PostgreSQL), looked up once per process:
    `pg_get_serial_sequence` reads the catalog on each call (~5 us; a batch drew its 1,000
    entry ids through it, 100,000 calls in 0.43-0.56 s where `nextval` alone took 0.06 s)."""
    table = model._meta.db_table
    name = _serial_sequences.get(table)
    if name is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [table, model._meta.pk.column])
            name = _serial_sequences[table] = cursor.fetchone()[0]
    return name


def balance_lock(*, program: Program, member_id: str, create: bool = False) -> MemberBalance | None:
    """The member's balance row, locked until commit; created on first use when `create`.
    It carries `tier_multiplier` and `tier_rank` (`tier_of`)."""
    balance = _balance_fetch_locked(program, member_id)
    if balance is None and create:
        # ON CONFLICT DO NOTHING: a concurrent first event of the same member creates it once.
        MemberBalance.objects.bulk_create(
            [MemberBalance(program=program, member_id=member_id, tier=entry_tier(program))],
            ignore_conflicts=True,
        )
        balance = _balance_fetch_locked(program, member_id)
    if balance is not None:
        balance.program = program  # saves a query wherever the program's settings are read
    return balance


def _balance_fetch_locked(program: Program, member_id: str) -> MemberBalance | None:
    conn = connections[DEFAULT_DB_ALIAS]
    sql = _BALANCE_LOCK_SQL
    if conn.features.has_select_for_update:
        sql += " FOR UPDATE OF b"
    with conn.cursor() as cursor:
        cursor.execute(sql, [db_id(program.pk), member_id])
        row = cursor.fetchone()
    if row is None:
        return None
    balance = balance_from_row(conn, row)
    tier_of(balance, *row[_BALANCE_WIDTH : _BALANCE_WIDTH + 2])
    return balance


def tier_of(balance: MemberBalance, multiplier, rank) -> None:
    """Sets what the balance lock reads of the member's tier: `tier_multiplier`, its earn
    multiplier, and `tier_rank`, its place from the lowest (both None: a tier the program
    no longer has)."""
    if multiplier is not None and not isinstance(multiplier, Decimal):
        multiplier = Decimal(str(multiplier))  # SQLite returns a float
    balance.tier_multiplier, balance.tier_rank = multiplier, rank


def balance_defaults() -> tuple[list[str], list[tuple[str, object]]]:
    """Every balance column but the id, program, member and tier, as a new MemberBalance
    is valued now (defaults, creation stamps): quoted names, and `%s::type` placeholders with
    their values, for the raw INSERTs of new balances (one event's, a batch's)."""
    template = MemberBalance()
    names, values = [], []
    for field in MemberBalance._meta.concrete_fields:
        if field.primary_key or field.attname in ("program_id", "member_id", "tier"):
            continue
        value = field.get_db_prep_save(field.pre_save(template, add=True), connection)
        names.append(connection.ops.quote_name(field.column))
        values.append((f"%s::{field.db_type(connection)}", value))
    return names, values


def balance_create(cursor, program: Program, member_id: str) -> None:
    """Creates the member's balance in the program's lowest tier ("basic" without tiers),
    unless it exists: a concurrent first event of the same member creates it once (ON
    CONFLICT waits for that one to commit). PostgreSQL; one statement with no ORM compile,
    so it may also go in a pipeline (`bulk_create` would open a transaction of its own)."""
    names, values = balance_defaults()
    cursor.execute(
        f"INSERT INTO {MemberBalance._meta.db_table}"  # noqa: S608 (the model's columns)
        f" (program_id, member_id, tier, {', '.join(names)})"
        " SELECT %s, %s, COALESCE((SELECT t.name FROM loyalty_tier t WHERE t.program_id = %s"
        f"  ORDER BY t.rank LIMIT 1), 'basic'), {', '.join(cast for cast, _ in values)}"
        " ON CONFLICT (program_id, member_id) DO NOTHING",
        [db_id(program.pk), member_id, db_id(program.pk), *(value for _, value in values)],
    )


def entry_tier(program: Program) -> str:
    tier = Tier.objects.filter(program=program).order_by("rank").values_list("name", flat=True)
    return tier.first() or "basic"


def has_blocking_flag(balance: MemberBalance) -> bool:
    flags = balance.fraud_flags
    # Most balances have none: no generator to start (asked every earning event).
    return bool(flags) and any(flag.get("code") in BLOCKING_FRAUD_FLAGS for flag in flags)


def fraud_flag_add(balance: MemberBalance, code: str, **detail) -> None:
    """Adds a flag (once per code) to the locked balance; the caller saves `fraud_flags`."""
    if any(flag.get("code") == code for flag in balance.fraud_flags):
        return
    balance.fraud_flags = [
        *balance.fraud_flags,
        {"code": code, "at": timezone.now().isoformat(), **detail},
    ]


def fraud_flag_remove(balance: MemberBalance, code: str) -> None:
    balance.fraud_flags = [f for f in balance.fraud_flags if f.get("code") != code]


def lot_expiry(program: Program, earned_at: datetime) -> datetime | None:
    """N days after earning, optionally rounded up to the end of that month, quarter or year
    (the end of that local day, in the program's time zone)."""
    if not program.expiry_days:
        return None
    tz = zoneinfo.ZoneInfo(program.timezone)
    due = timezone.localtime(earned_at, tz) + timedelta(days=program.expiry_days)
    rounding = program.expiry_rounding
    if rounding == Program.ExpiryRounding.NONE:
        return due
    day = due.date()
    if rounding == Program.ExpiryRounding.END_OF_MONTH:
        last = date(day.year, day.month, calendar.monthrange(day.year, day.month)[1])
    elif rounding == Program.ExpiryRounding.END_OF_QUARTER:
        month = ((day.month - 1) // 3 + 1) * 3
        last = date(day.year, month, calendar.monthrange(day.year, month)[1])
    else:
        last = date(day.year, 12, 31)
    return datetime.combine(last + timedelta(days=1), time.min, tzinfo=tz)


def lot_create(*, balance: MemberBalance, entry: LedgerEntry, points: Decimal) -> PointLot:
    return PointLot.objects.create(
        balance=balance,
        program_id=balance.program_id,
        entry=entry,
        points=points,
        remaining=points,
        earned_at=entry.created_at,
        expires_at=lot_expiry(balance.program, entry.created_at),
    )


def totals_fit(
    balance: MemberBalance, points: Decimal, *, point_value: Decimal, spend: Decimal = ZERO
) -> bool:
    """Whether `points` given to (or, negative, taken from) the member, their cost at
    `point_value` and `spend` added to the member's spend keep every figure within what the
    ledger's NUMERIC(20,2) columns hold. Checked before any change: past them, the database
    refuses the row, and in a batch or a job chunk every row with it."""
    earned = balance.lifetime_earned + points if points > 0 else balance.lifetime_earned
    totals = (points, points * point_value, balance.points_balance + points, earned)
    return all(map(fits_ledger, totals)) and fits_ledger(balance.lifetime_spend + spend)


def lots_consume(
    *, balance: MemberBalance, points: Decimal, first_entry_id: int | None = None
) -> Decimal:
    """Takes `points` from the member's open lots, oldest first (after the lot of
    `first_entry_id`, when given, e.g. the purchase a refund claws back). Returns what it took.
    The caller holds the balance lock, which guards the member's lots."""
    if points <= 0:
        return ZERO
    lots = list(PointLot.objects.filter(balance=balance, remaining__gt=0).order_by("id"))
    if first_entry_id is not None:
        lots.sort(key=lambda lot: lot.entry_id != first_entry_id)
    left = points
    changed = []
    for lot in lots:
        if left <= 0:
            break
        take = min(lot.remaining, left)
        lot.remaining -= take
        left -= take
        changed.append(lot)
    PointLot.objects.bulk_update(changed, ["remaining"])
    return points - left


def lots_settle(
    *,
    balance: MemberBalance,
    before: Decimal,
    after: Decimal,
    entry: LedgerEntry,
    first_entry_id: int | None = None,
) -> None:
    """Keeps `sum(lot.remaining) == max(points_balance, 0)` across a balance change: a gain
    first repays any debt and lots the rest; a loss consumes lots FIFO."""
    gained = max(after, ZERO) - max(before, ZERO)
    if gained > 0:
        lot_create(balance=balance, entry=entry, points=gained)
    elif gained < 0:
        lots_consume(balance=balance, points=-gained, first_entry_id=first_entry_id)
