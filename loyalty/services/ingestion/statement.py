"""The PostgreSQL fast path of an earning: one statement locks the balance (with the replay
probe and the new entry's id), one data-modifying statement writes every row."""

import json
from contextlib import contextmanager
from datetime import date, datetime, time
from decimal import Decimal
from uuid import UUID

import orjson
from django.db import DatabaseError, connection, models
from django.db.models.expressions import DatabaseDefault
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit.models import AuditEntry
from audit.services import audit_entry_values

from ...actors import Actor
from ...models import LedgerEntry, MemberBalance, OutboxEvent, PointLot, Program
from ...money import ZERO
from ..balances import (
    _BALANCE_LOCK_SQL,  # one definition of the lock's columns
    _BALANCE_WIDTH,
    balance_create,
    balance_from_row,
    db_id,
    lot_expiry,
    serial_sequence,
    tier_of,
)
from ..budget import BudgetRetry, budget_charge, budget_charge_statement
from .earning import earn_apply
from .entries import _event_payload, entry_audit_after, entry_build
from .inputs import EventInput, event_validate
from .key_holds import held_sql, key_held

# The balance lock of `balance_lock`, plus what every event needs next, in the same round
# trip: the entry a repeat of the key already wrote (a probe of the partial unique index;
# `<> ''` repeats its predicate so a generic plan may use it), the pending approval request
# holding the key, if any (`key_holds`), and the id of the entry this
# event will write, so the entry, its lot, outbox and audit rows can all name it in the one
# statement that writes them. The probe reads the statement's snapshot, taken before the lock
# was granted: a repeat committed by a request we waited for may not be seen here. An
# earning's insert then fails on the key and `event_ingest` answers it as a replay, and one
# refused before its insert (the budget that repeat spent) asks again; a refund or an
# adjustment asks again after the lock (`ingest_in_transaction`).
_EVENT_LOCK_COLUMNS = (
    ", (SELECT e.id FROM loyalty_ledgerentry e WHERE e.program_id = b.program_id"  # noqa: S608
    "   AND e.idempotency_key = %s AND e.idempotency_key <> '') AS replay_id,"
    f" ({held_sql('b.program_id')}) AS held_by,"
    " nextval(%s::regclass) AS entry_id"
)
_EVENT_LOCK_SQL = (
    _BALANCE_LOCK_SQL.replace(
        " FROM loyalty_memberbalance b", _EVENT_LOCK_COLUMNS + " FROM loyalty_memberbalance b", 1
    )
    + " FOR UPDATE OF b"
)


def entry_id_stored(program_pk, idempotency_key: str) -> int | None:
    """The id of the entry the key wrote in the program, if any."""
    with connection.cursor() as cursor:
        cursor.execute(
            # `<> ''` repeats the partial unique index's predicate, so that a prepared
            # (generic) plan may still use that index.
            "SELECT id FROM loyalty_ledgerentry WHERE program_id = %s"
            " AND idempotency_key = %s AND idempotency_key <> ''",
            [db_id(program_pk), idempotency_key],
        )
        found = cursor.fetchone()
    return None if found is None else found[0]


def _event_lock(
    cursor, program: Program | None, event: EventInput, preface=None
) -> tuple[MemberBalance, int | None, int]:
    """The member's balance, locked until commit (created on first use), the id of the entry
    the event's key already wrote (None: a new event), and the id for the new entry. The
    balance's `program` is the program.

    With a `preface` (program None; see `event_ingest_prefaced`), its statement goes first, in
    the lock's round trip; the lock statement takes its conditions, and its answer is the
    program, which is then validated against the event."""
    sequence = serial_sequence(LedgerEntry)
    program_pk = program.pk if preface is None else preface.program_pk
    sql = _EVENT_LOCK_SQL
    key = event.idempotency_key
    params = [key, key, timezone.now(), sequence, db_id(program_pk), event.member_id]
    if preface is not None:
        sql, params = preface.lock_statement(sql, params)
        preface.send()
    cursor.execute(sql, params)
    row = cursor.fetchone()
    if preface is not None:
        program = preface.resolve()
        event_validate(program, event)
    if row is None:
        balance_create(cursor, program, event.member_id)
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None and preface is not None:  # its conditions no longer hold
            preface.refuse()
    balance = balance_from_row(cursor.db, row)
    # The columns after the balance's: see _EVENT_LOCK_SQL.
    multiplier, rank, replay_id, held_by, entry_id = row[_BALANCE_WIDTH:]
    tier_of(balance, multiplier, rank)
    if replay_id is None and held_by is not None:
        # Both probes read the snapshot from before the lock: the holder may have been
        # approved and written the key meanwhile, its entry the answer then.
        replay_id = entry_id_stored(program_pk, key)
        if replay_id is None:
            raise key_held(held_by, key)
    balance.program = program  # saves a query wherever the program's settings are read
    return balance, replay_id, entry_id


def _earn_in_one_statement(
    cursor,
    program: Program,
    balance: MemberBalance,
    event: EventInput,
    actor: Actor,
    entry_id: int,
    *,
    retryable: bool,
) -> LedgerEntry:
    """`_earn` plus the audit entry, with every row written by one statement: the earning
    rules, the lot, the outbox event and the audit entry are the same functions and values as
    on the ORM path; only the round trips differ (each costs ~0.3 ms of CPU, see
    docs/BENCHMARKS.md). When the caller can retry, the budget charge joins the statement
    too: the rules go on as if one shard pays in full (the fast path's only outcome); when no
    shard could pay, the statement fails as a whole (`loyalty_budget_retry()`, raising
    BudgetRetry: see `budget_retry_on_refusal`) and the event goes to the guarded path, which
    decides the rest. Nothing is read back: in a pipeline its result comes with the sync's."""
    charged: list[Decimal] = []

    def charge(points: Decimal) -> Decimal:
        if retryable:
            charged.append(points)
            return points
        return budget_charge(program=program, points=points)

    earning = earn_apply(
        program=program, balance=balance, event=event, now=timezone.now(), charge=charge
    )
    entry = entry_build(
        program, balance, event, actor, points=earning.points, details=earning.details
    )
    entry.pk = entry_id
    parts, params = [], []
    if charged:
        shard_sql, shard_params = budget_charge_statement(program=program, points=charged[0])
        parts.append(f"s AS ({shard_sql})")
        params.extend(shard_params)
    _cte_insert(entry, "e", parts, params)  # stamps created_at, which the lot reads
    # The lot, the outbox event and the audit entry are only written: their rows go without
    # model instances.
    lot = earn_lot_values(program, balance, entry, before=earning.before)
    if lot is not None:
        _cte_insert_values(PointLot, lot, "l", parts, params)
    if earning.points > 0:
        _cte_insert_values(
            OutboxEvent, earn_outbox_values(program, balance, entry), "o", parts, params
        )
    audit = audit_entry_values(
        actor=actor,
        action=f"transaction.{event.type}",
        entity_type="transaction",
        entity_id=entry.pk,
        merchant_id=program.merchant_id,
        after=entry_audit_after(entry, balance),
    )
    _cte_insert_values(AuditEntry, audit, "a", parts, params)
    update_sql, update_params = _update_sql(balance, [*earning.fields, "updated_at"])
    if charged:
        # No shard paid: the whole statement fails (every CTE's rows with it).
        update_sql += (
            " AND CASE WHEN EXISTS (SELECT FROM s) THEN true ELSE loyalty_budget_retry() END"
        )
    cursor.execute(f"WITH {', '.join(parts)} {update_sql}", [*params, *update_params])
    entry._state.adding = False
    return entry


# `loyalty_budget_retry()`'s SQLSTATE (migration loyalty/0007).
BUDGET_RETRY_SQLSTATE = "LY001"


@contextmanager
def budget_retry_on_refusal():
    """Turns the write statement's "no free shard could pay" into BudgetRetry, wherever its
    result arrives: at the statement, or at the end of the pipeline that sent it (the
    caller's: only a retryable write charges the budget in its statement)."""
    try:
        yield
    except DatabaseError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == BUDGET_RETRY_SQLSTATE:
            raise BudgetRetry from exc
        raise


def earn_lot_values(
    program: Program, balance: MemberBalance, entry: LedgerEntry, *, before: Decimal
) -> dict | None:
    """The lot of an earning entry, as `PointLot` field values by attname: a gain first repays
    any refund debt, the rest forms a lot (as `lots_settle` does for a gain)."""
    gained = max(entry.balance_after, ZERO) - max(before, ZERO)
    if gained <= 0:
        return None
    return {
        "balance_id": balance.pk,
        "program_id": program.pk,
        "entry_id": entry.pk,
        "points": gained,
        "remaining": gained,
        "earned_at": entry.created_at,
        "expires_at": lot_expiry(program, entry.created_at),
    }


def earn_outbox_values(program: Program, balance: MemberBalance, entry: LedgerEntry) -> dict:
    """The `loyalty.points.earned` event of an earning entry, as `outbox_publish` writes it,
    as `OutboxEvent` field values by attname."""
    return {
        "merchant_id": program.merchant_id,
        "program_id": program.pk,
        "event_type": "loyalty.points.earned",
        "payload": {"program_id": str(program.pk), **_event_payload(entry, balance)},
    }


def _cte_insert(obj, name: str, parts: list[str], params: list) -> None:
    """Appends `name AS (INSERT ...)` of the unsaved `obj`, valued as Django's own INSERT
    would be (auto_now stamps); columns left to a database default (an unset auto id,
    db_default) are not sent. The row travels as ONE jsonb parameter: with one parameter per
    column the statement has ~55, past psycopg's limit (50) for caching its conversion to
    PostgreSQL's placeholders, which then costs 0.15 ms per event (timeit), plus the Django
    adaptation of each of the 55 values."""
    row = {}
    for model_field, attname, column, stamp in _columns_of(type(obj)):
        value = getattr(obj, attname)
        if value is None:
            if model_field.primary_key:
                continue  # an auto id: the database's
        elif isinstance(value, DatabaseDefault):
            continue
        row[column] = model_field.pre_save(obj, add=True) if stamp else value
    _cte_append(obj._meta.db_table, row, name, parts, params)


def _cte_append(table: str, row: dict, name: str, parts: list[str], params: list):
    key = (table, name, *row)
    sql = _cte_sql.get(key)
    if sql is None:
        names = ", ".join(connection.ops.quote_name(column) for column in row)
        sql = _cte_sql[key] = (
            f"{name} AS (INSERT INTO {table} ({names})"  # noqa: S608 (the model's columns)
            f" SELECT {names} FROM jsonb_populate_record(NULL::{table}, %s))"
        )
    parts.append(sql)
    params.append(Jsonb(row, _json_dumps))


def _cte_insert_values(
    model: type, values: dict, name: str, parts: list[str], params: list
) -> None:
    """`_cte_insert(model(**values), ...)` without the instance (building one and reading it
    back costs more than the row): `values` by attname, every other column as the model would
    value it (its default, an auto_now stamp; an unset auto id or a db_default is left to the
    database)."""
    row = {}
    for attname, column, stamp, default in _insert_plan(model):
        if stamp is not None:
            # auto_now / auto_now_add overwrite any given value on insert, as pre_save does.
            row[column] = _stamp_now(stamp)
        elif attname in values:
            row[column] = values[attname]
        elif default is not None:
            row[column] = default()
    _cte_append(model._meta.db_table, row, name, parts, params)


def _stamp_now(model_field):
    """The value `pre_save(add=True)` gives a stamped field, for the field types that stamp
    the current time; any other stamping field needs an instance (`_cte_insert`)."""
    if isinstance(model_field, models.DateTimeField):
        return timezone.now()
    raise TypeError(f"{model_field!r} stamps its value: insert an instance (_cte_insert).")


def _update_sql(obj, attnames: list[str]) -> tuple[str, list]:
    """`UPDATE ... SET` of the given fields of a saved `obj`, as `save(update_fields=...)`
    (one jsonb parameter, as `_cte_insert`)."""
    key = (obj._meta.db_table, *attnames)
    found = _update_plans.get(key)
    if found is None:
        meta = obj._meta
        by_attname = {spec[1]: spec for spec in _columns_of(type(obj))}
        specs = [by_attname[attname] for attname in attnames]
        names = ", ".join(connection.ops.quote_name(spec[2]) for spec in specs)
        sql = (
            f"UPDATE {meta.db_table} SET ({names}) = (SELECT {names}"  # noqa: S608 (the model's columns)
            f" FROM jsonb_populate_record(NULL::{meta.db_table}, %s)) WHERE id = %s"
        )
        found = _update_plans[key] = (sql, specs)
    sql, specs = found
    row = {}
    for model_field, attname, column, stamp in specs:
        row[column] = model_field.pre_save(obj, add=False) if stamp else getattr(obj, attname)
    return sql, [Jsonb(row, _json_dumps), obj.pk]


# What `_cte_insert` and `_update_sql` need of a model's columns and statements, worked out
# once per model (field introspection and quoting cost more than the rest of the row).
_column_specs: dict[type, list[tuple]] = {}
_insert_plans: dict[type, list[tuple]] = {}
_cte_sql: dict[tuple, str] = {}
_update_plans: dict[tuple, tuple[str, list]] = {}


def _columns_of(model: type) -> list[tuple]:
    """(field, attname, column, stamp) of each concrete field: `stamp` when its `pre_save`
    gives the value (auto_now, auto_now_add, or any field type that overrides it)."""
    specs = _column_specs.get(model)
    if specs is None:
        specs = _column_specs[model] = [
            (f, f.attname, f.column, _stamps(f)) for f in model._meta.concrete_fields
        ]
    return specs


def _insert_plan(model: type) -> list[tuple]:
    """(attname, column, stamp, default) of each concrete field, for `_cte_insert_values`:
    `stamp` is the field when it stamps its value, `default` its `get_default` unless the
    database values it (an auto id, a db_default alone): None, the column is then not sent."""
    plan = _insert_plans.get(model)
    if plan is None:
        plan = _insert_plans[model] = []
        for model_field, attname, column, stamp in _columns_of(model):
            left_to_database = not model_field.has_default() and (
                model_field.primary_key or model_field.has_db_default()
            )
            plan.append(
                (
                    attname,
                    column,
                    model_field if stamp else None,
                    None if left_to_database else model_field.get_default,
                )
            )
    return plan


def _stamps(model_field) -> bool:
    if isinstance(model_field, models.DateField):  # DateTimeField too
        return model_field.auto_now or model_field.auto_now_add
    return type(model_field).pre_save is not models.Field.pre_save


def _json_dumps(row: dict) -> bytes | str:
    """A row's JSON for its jsonb parameter, by orjson: a fifth of json.dumps' CPU on every
    row of every event, and jsonb reads both texts to the same value. Decimals, UUIDs and
    times go as `_json_value` writes them (orjson's own UTC offsets are whole minutes), the
    rest as orjson writes it: no conversion of the ~50 values of an event one by one."""
    try:
        return orjson.dumps(row, default=_json_value, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except TypeError:  # orjson refuses ints past 64 bits and non-text keys; json does not
        return json.dumps(row, default=_json_value)


def _json_value(value):
    """A value as JSON that PostgreSQL reads back exactly: Decimals and times as text (no
    float on the way). The encoders' hook for the values they do not write themselves."""
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
