"""Exactly-once ingestion of merchant events: purchase, refund, referral, campaign_bonus,
manual_adjust.

One event is one transaction: lock the member's balance row, compute, charge the budget
(sharded), write one immutable ledger entry, settle the point lots, update the balance cache,
append the outbox event and the audit entry. The idempotency key is unique per program in the
database, so concurrent repeats write one entry and every repeat answers the first result.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from uuid import UUID

from django.db import IntegrityError, connection, models, transaction
from django.db.models.expressions import DatabaseDefault
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit.services import audit_entries_build, audit_record
from sira.scoring import MemberFacts, sira_score_purchase, sira_settings_resolve

from ..actors import Actor
from ..errors import (
    AccountFrozen,
    CurrencyMismatch,
    FraudReview,
    IdempotencyKeyReused,
    InsufficientPoints,
    OriginalNotFound,
    ProgramInactive,
    RefundExceedsOriginal,
    ValidationFailed,
)
from ..models import LedgerEntry, MemberBalance, OutboxEvent, PointLot, Program, Tier
from ..money import (
    POINTS_QUANTUM,
    ZERO,
    fits_ledger,
    is_exact_money,
    is_exact_points,
    points_cost,
    points_floor,
)
from .balances import (
    _BALANCE_LOCK_SQL,  # one definition of the lock's columns
    _BALANCE_WIDTH,
    REFUND_DEBT_FLAG,
    balance_from_row,
    balance_lock,
    db_id,
    entry_tier,
    fraud_flag_add,
    fraud_flag_remove,
    has_blocking_flag,
    lot_expiry,
    lots_settle,
    program_local_date,
)
from .budget import BudgetRetry, budget_charge, budget_charge_statement, budget_credit
from .outbox import outbox_publish

EARN_TYPES = {"purchase", "referral", "campaign_bonus"}
POINTS_TYPES = {"referral", "campaign_bonus", "manual_adjust"}
EVENT_TYPES = {"purchase", "refund", *POINTS_TYPES}


@dataclass(frozen=True)
class EventInput:
    """A validated merchant event. Amounts are Decimals; `occurred_at` is aware."""

    type: str
    member_id: str
    idempotency_key: str
    amount: Decimal | None = None
    currency: str | None = None
    points: Decimal | None = None
    reason: str = ""
    module: str = ""
    reference: str = ""
    original_reference: str = ""
    occurred_at: datetime | None = None
    metadata: dict = field(default_factory=dict)

    def fingerprint(self) -> str:
        """A digest of what the event asks for, to tell a replay from a reused key."""
        body = {
            "type": self.type,
            "member_id": self.member_id,
            "amount": None if self.amount is None else str(self.amount.normalize()),
            "currency": self.currency,
            "points": None if self.points is None else str(self.points.normalize()),
            "reference": self.reference,
            "original_reference": self.original_reference,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class IngestResult:
    entry: LedgerEntry
    replayed: bool = False

    def as_dict(self) -> dict:
        """The response body; built from the stored entry, so a replay answers the same."""
        details = self.entry.details
        return {
            "transaction_id": str(self.entry.pk),
            "type": self.entry.type,
            "member_id": details["member_id"],
            # Two places on the first answer too: a replay reads NUMERIC(20,2) back.
            "points": str(self.entry.points.quantize(POINTS_QUANTUM)),
            "balance": details["balance"],
            "breakdown": details.get("breakdown", {}),
            "sira": details.get("sira"),
            "created_at": self.entry.created_at.isoformat(),
        }


def event_ingest(*, program: Program, event: EventInput, actor: Actor) -> IngestResult:
    """Applies one event exactly once per (program, idempotency key)."""
    event_validate(program, event)
    # No replay lookup before the transaction: the one after the balance lock answers a
    # repeat just as well, and a lookup here would cost every new event a statement.
    try:
        try:
            return _ingest_atomic(program=program, event=event, actor=actor, retryable=True)
        except BudgetRetry:
            # No free budget shard could pay: rare (near the limit, or every shard busy).
            # The first try may hold a shard lock out of order, so it was rolled back whole;
            # this one takes the savepoint-guarded path, and the slow path if need be.
            return _ingest_atomic(program=program, event=event, actor=actor, retryable=False)
    except IntegrityError:
        # A concurrent request with the same key committed first: answer its result.
        replay = event_replay(program, event)
        if replay:
            return replay
        raise


def event_replay(program: Program, event: EventInput) -> IngestResult | None:
    # Every new event asks this and almost always hears "no": a plain SQL probe of the unique
    # index costs a fraction of the ORM query; the entry is loaded only for a repeat.
    with connection.cursor() as cursor:
        cursor.execute(
            # `<> ''` repeats the partial unique index's predicate, so that a prepared
            # (generic) plan may still use that index.
            "SELECT id FROM loyalty_ledgerentry WHERE program_id = %s"
            " AND idempotency_key = %s AND idempotency_key <> ''",
            [db_id(program.pk), event.idempotency_key],
        )
        found = cursor.fetchone()
    if found is None:
        return None
    return replay_answer(LedgerEntry.objects.get(pk=found[0]), event)


def replay_answer(entry: LedgerEntry, event: EventInput) -> IngestResult:
    """The stored answer to a repeat of `event` whose key already wrote `entry`."""
    if entry.details.get("fingerprint") != event.fingerprint():
        raise IdempotencyKeyReused(
            "This idempotency key was already used for a different event.",
            idempotency_key=event.idempotency_key,
        )
    return IngestResult(entry=entry, replayed=True)


@transaction.atomic(durable=True)
def _ingest_atomic(
    *, program: Program, event: EventInput, actor: Actor, retryable: bool
) -> IngestResult:
    return ingest_in_transaction(program=program, event=event, actor=actor, retryable=retryable)


def ingest_in_transaction(
    *, program: Program, event: EventInput, actor: Actor, retryable: bool = False
) -> IngestResult:
    """The body of one ingestion; the caller owns the transaction (a batch item's savepoint).
    `retryable`: the caller runs the whole transaction again on BudgetRetry, so an earning's
    budget charge may go without its savepoint (`budget_charge_statement`)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # one cursor for the event's two statements
            balance, replay_id, entry_id = _event_lock(cursor, program, event)
            if replay_id is None and event.type in EARN_TYPES:
                return IngestResult(
                    entry=_earn_in_one_statement(
                        cursor, program, balance, event, actor, entry_id, retryable=retryable
                    )
                )
        if replay_id is not None:
            return replay_answer(LedgerEntry.objects.get(pk=replay_id), event)
    else:
        balance = balance_lock(program=program, member_id=event.member_id, create=True)
        replay = event_replay(program, event)  # committed by a request we waited for on the lock
        if replay:
            return replay
    if event.type == "refund":
        entry = _refund(program, balance, event, actor)
    elif event.type == "manual_adjust":
        entry = _adjust(program, balance, event, actor)
    else:
        entry = _earn(program, balance, event, actor)
    audit_record(
        actor=actor,
        action=f"transaction.{event.type}",
        entity_type="transaction",
        entity_id=entry.pk,
        merchant_id=program.merchant_id,
        after=entry_audit_after(entry, balance),
    )
    return IngestResult(entry=entry)


def entry_audit_after(entry: LedgerEntry, balance: MemberBalance) -> dict:
    """What the audit entry of an ingested event records (PII scrubbed by the audit trail)."""
    return {
        "member_id": balance.member_id,
        "points": str(entry.points),
        "balance_after": str(entry.balance_after),
        "reference": entry.reference,
    }


# The balance lock of `balance_lock`, plus the two things every event needs next, in the same
# round trip: the entry a repeat of the key already wrote (a probe of the partial unique index;
# `<> ''` repeats its predicate so a generic plan may use it), and the id of the entry this
# event will write, so the entry, its lot, outbox and audit rows can all name it in the one
# statement that writes them. The probe reads the statement's snapshot, taken before the lock
# was granted: a repeat committed by a request we waited for is not seen here, but its key
# then makes our insert fail and `event_ingest` answers it as a replay.
_EVENT_LOCK_SQL = (
    _BALANCE_LOCK_SQL.replace(  # noqa: S608 (fixed text: the model's columns)
        " FROM loyalty_memberbalance b",
        ", (SELECT e.id FROM loyalty_ledgerentry e WHERE e.program_id = b.program_id"
        "   AND e.idempotency_key = %s AND e.idempotency_key <> '') AS replay_id,"
        " nextval(pg_get_serial_sequence('loyalty_ledgerentry', 'id')) AS entry_id"
        " FROM loyalty_memberbalance b",
        1,
    )
    + " FOR UPDATE OF b"
)


def _event_lock(
    cursor, program: Program, event: EventInput
) -> tuple[MemberBalance, int | None, int]:
    """The member's balance, locked until commit (created on first use), the id of the entry
    the event's key already wrote (None: a new event), and the id for the new entry."""
    params = [event.idempotency_key, db_id(program.pk), event.member_id]
    cursor.execute(_EVENT_LOCK_SQL, params)
    row = cursor.fetchone()
    if row is None:
        # ON CONFLICT DO NOTHING: a concurrent first event of the same member creates it once.
        MemberBalance.objects.bulk_create(
            [MemberBalance(program=program, member_id=event.member_id, tier=entry_tier(program))],
            ignore_conflicts=True,
        )
        cursor.execute(_EVENT_LOCK_SQL, params)
        row = cursor.fetchone()
    balance = balance_from_row(cursor.db, row)
    # The columns after the balance's: see _EVENT_LOCK_SQL.
    balance.tier_multiplier, replay_id, entry_id = row[_BALANCE_WIDTH:]
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
    too: the rules go on as if one shard pays in full (the fast path's only outcome), and
    every write is conditional on that shard's UPDATE; when no shard could pay, nothing is
    written and BudgetRetry sends the event to the guarded path, which decides the rest."""
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
    parts, params, gate = [], [], ""
    if charged:
        shard_sql, shard_params = budget_charge_statement(program=program, points=charged[0])
        parts.append(f"s AS ({shard_sql})")
        params.extend(shard_params)
        gate = " WHERE EXISTS (SELECT FROM s)"
    _cte_insert(entry, "e", parts, params, gate)  # stamps created_at, which the lot reads
    lot = earn_lot(program, balance, entry, before=earning.before)
    if lot is not None:
        _cte_insert(lot, "l", parts, params, gate)
    if earning.points > 0:
        _cte_insert(earn_outbox(program, balance, entry), "o", parts, params, gate)
    (audit,) = audit_entries_build(
        actor=actor,
        action=f"transaction.{event.type}",
        entity_type="transaction",
        merchant_id=program.merchant_id,
        rows=[(entry.pk, None, entry_audit_after(entry, balance))],
    )
    _cte_insert(audit, "a", parts, params, gate)
    update_sql, update_params = _update_sql(balance, [*earning.fields, "updated_at"])
    if gate:
        update_sql += " AND EXISTS (SELECT FROM s)"
    # Constraint triggers (foreign keys) run at the end of the statement, so the lot may point
    # at the entry written beside it.
    cursor.execute(f"WITH {', '.join(parts)} {update_sql}", [*params, *update_params])
    if not cursor.rowcount:
        raise BudgetRetry  # no shard paid: nothing was written
    entry._state.adding = False
    return entry


def earn_lot(
    program: Program, balance: MemberBalance, entry: LedgerEntry, *, before: Decimal
) -> PointLot | None:
    """The lot of an earning entry (unsaved): a gain first repays any refund debt, the rest
    forms a lot (as `lots_settle` does for a gain). Related rows by id: it is only written."""
    gained = max(entry.balance_after, ZERO) - max(before, ZERO)
    if gained <= 0:
        return None
    return PointLot(
        balance_id=balance.pk,
        program_id=program.pk,
        entry_id=entry.pk,
        points=gained,
        remaining=gained,
        earned_at=entry.created_at,
        expires_at=lot_expiry(program, entry.created_at),
    )


def earn_outbox(program: Program, balance: MemberBalance, entry: LedgerEntry) -> OutboxEvent:
    """The `loyalty.points.earned` event of an earning entry (unsaved), as `outbox_publish`."""
    return OutboxEvent(
        merchant_id=program.merchant_id,
        program_id=program.pk,
        event_type="loyalty.points.earned",
        payload={"program_id": str(program.pk), **_event_payload(entry, balance)},
    )


def _cte_insert(obj, name: str, parts: list[str], params: list, gate: str = "") -> None:
    """Appends `name AS (INSERT ...)` of the unsaved `obj`, valued as Django's own INSERT
    would be (auto_now stamps); columns left to a database default (an unset auto id,
    db_default) are not sent. The row travels as ONE jsonb parameter: with one parameter per
    column the statement has ~55, past psycopg's limit (50) for caching its conversion to
    PostgreSQL's placeholders, which then costs 0.15 ms per event (timeit), plus the Django
    adaptation of each of the 55 values."""
    row = {}
    for model_field, attname, column, stamp, to_json in _columns_of(type(obj)):
        value = getattr(obj, attname)
        if value is None:
            if model_field.primary_key:
                continue  # an auto id: the database's
        elif isinstance(value, DatabaseDefault):
            continue
        if stamp:
            value = model_field.pre_save(obj, add=True)
        if to_json and value is not None:
            convert = _JSON_OF_TYPE.get(type(value), _json_value)
            row[column] = value if convert is None else convert(value)
        else:
            row[column] = value
    key = (obj._meta.db_table, name, gate, *row)
    sql = _cte_sql.get(key)
    if sql is None:
        table = obj._meta.db_table
        names = ", ".join(connection.ops.quote_name(column) for column in row)
        sql = _cte_sql[key] = (
            f"{name} AS (INSERT INTO {table} ({names})"  # noqa: S608 (the model's columns)
            f" SELECT {names} FROM jsonb_populate_record(NULL::{table}, %s){gate})"
        )
    parts.append(sql)
    params.append(Jsonb(row))


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
    for model_field, attname, column, stamp, to_json in specs:
        value = model_field.pre_save(obj, add=False) if stamp else getattr(obj, attname)
        row[column] = value if not to_json or value is None else _json_value(value)
    return sql, [Jsonb(row), obj.pk]


# What `_cte_insert` and `_update_sql` need of a model's columns and statements, worked out
# once per model (field introspection and quoting cost more than the rest of the row).
_column_specs: dict[type, list[tuple]] = {}
_cte_sql: dict[tuple, str] = {}
_update_plans: dict[tuple, tuple[str, list]] = {}


def _columns_of(model: type) -> list[tuple]:
    """(field, attname, column, stamp, to_json) of each concrete field: `stamp` when its
    `pre_save` gives the value (auto_now, auto_now_add, or any field type that overrides it),
    `to_json` when its value needs `_json_value` (a JSONField's document goes as it is)."""
    specs = _column_specs.get(model)
    if specs is None:
        specs = _column_specs[model] = [
            (f, f.attname, f.column, _stamps(f), not isinstance(f, models.JSONField))
            for f in model._meta.concrete_fields
        ]
    return specs


def _stamps(model_field) -> bool:
    if isinstance(model_field, models.DateField):  # DateTimeField too
        return model_field.auto_now or model_field.auto_now_add
    return type(model_field).pre_save is not models.Field.pre_save


def _json_value(value):
    """A value as JSON that PostgreSQL reads back exactly: Decimals and times as text (no
    float on the way)."""
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


# `_json_value` by exact type, for the common ones (None: as it is); any other type (a
# subclass) goes through `_json_value` itself. ~45 values per event.
_JSON_OF_TYPE = {
    str: None,
    int: None,
    bool: None,
    Decimal: str,
    UUID: str,
    datetime: datetime.isoformat,
    date: date.isoformat,
}


def event_validate(program: Program, event: EventInput) -> None:
    errors: dict[str, list[str]] = {}
    if event.type not in EVENT_TYPES:
        errors["type"] = [f"Must be one of {sorted(EVENT_TYPES)}."]
    if not event.member_id:
        errors["member_id"] = ["This field is required."]
    if not event.idempotency_key:
        errors["idempotency_key"] = ["This field is required."]
    if event.type in ("purchase", "refund"):
        if event.amount is None or not fits_ledger(event.amount) or event.amount <= 0:
            errors["amount"] = ["A positive amount below 10^18 is required."]
        elif event.currency == program.currency and not is_exact_money(
            event.amount, program.currency
        ):
            errors["amount"] = [f"{program.currency} amounts have no more places than its unit."]
        if not event.currency:
            errors["currency"] = ["This field is required."]
    if event.type == "refund" and not event.original_reference:
        errors["original_reference"] = ["A refund names the purchase it refunds."]
    if event.type in POINTS_TYPES:
        if event.points is None or not fits_ledger(event.points):
            errors["points"] = ["Points below 10^18 are required."]
        elif not is_exact_points(event.points):
            errors["points"] = ["Points with at most 2 decimal places are required."]
        elif event.type != "manual_adjust" and event.points <= 0:
            errors["points"] = ["Must be positive."]
        elif event.points == 0:
            errors["points"] = ["Must not be zero."]
        if not event.reason:
            errors["reason"] = ["This field is required."]
    if errors:
        raise ValidationFailed("The event is invalid.", errors=errors)
    if program.status == Program.Status.CLOSED or (
        program.status != Program.Status.ACTIVE and event.type != "refund"
    ):
        # Refunds still claw back while a program is suspended: refusing them keeps points
        # that were never paid for.
        raise ProgramInactive(status=program.status)
    if event.currency and event.currency != program.currency:
        raise CurrencyMismatch(expected=program.currency, received=event.currency)


def _refuse_blocked(program: Program, balance: MemberBalance) -> None:
    if balance.is_frozen:
        raise AccountFrozen(member_id=balance.member_id)
    if program.fraud_detection_enabled and has_blocking_flag(balance):
        raise FraudReview(member_id=balance.member_id)


def _earn(program: Program, balance: MemberBalance, event: EventInput, actor: Actor) -> LedgerEntry:
    """purchase, referral, campaign_bonus: rate (or given points), SIRA, daily cap, budget."""
    earning = earn_apply(
        program=program,
        balance=balance,
        event=event,
        now=timezone.now(),
        charge=lambda points: budget_charge(program=program, points=points),
    )
    entry = _entry_write(
        program, balance, event, actor, points=earning.points, details=earning.details
    )
    lots_settle(balance=balance, before=earning.before, after=balance.points_balance, entry=entry)
    balance.save(update_fields=[*earning.fields, "updated_at"])
    if earning.points > 0:
        outbox_publish(
            program=program,
            event_type="loyalty.points.earned",
            payload=_event_payload(entry, balance),
        )
    return entry


@dataclass
class Earning:
    """What the earning rules decided for one event, already applied to the balance in memory."""

    points: Decimal
    before: Decimal  # points_balance before the event
    fields: list[str]  # the balance fields it changed
    details: dict  # breakdown and SIRA score, stored on the ledger entry


def earn_apply(
    *,
    program: Program,
    balance: MemberBalance,
    event: EventInput,
    now: datetime,
    charge: Callable[[Decimal], Decimal],
) -> Earning:
    """The earning rules of one purchase, referral or campaign_bonus on the locked `balance`,
    in memory. `charge(points)` pays the budget: it returns the points paid for or raises
    BudgetExhausted. Every refusal comes before any change. Shared by `event_ingest` and the
    set-based batch, so both award exactly the same."""
    _refuse_blocked(program, balance)
    today = program_local_date(program, now)
    earned_today = balance.earned_today if balance.earned_day == today else ZERO
    breakdown: dict = {}
    sira = None

    if event.type == "purchase":
        multiplier = _tier_multiplier(program, balance)
        facts = MemberFacts(
            churn_risk=balance.churn_risk,
            engagement_score=balance.engagement_score,
            lifetime_spend=balance.lifetime_spend,
            tier=balance.tier,
            last_purchase_at=balance.last_purchase_at,
            first_purchase_today=balance.last_purchase_at is None
            or program_local_date(program, balance.last_purchase_at) != today,
        )
        score = sira_score_purchase(
            member=facts,
            amount=event.amount,
            module=event.module,
            now=now,
            settings=sira_settings_resolve(program.sira_settings),
        )
        base = points_floor(event.amount * program.earn_rate)
        tier_bonus = points_floor(event.amount * program.earn_rate * (multiplier - 1))
        sira_rate = points_floor(
            event.amount * program.earn_rate * multiplier * (score.multiplier - 1)
        )
        sira_bonus = points_floor(score.bonus_points)
        breakdown = {
            "base_points": str(base),
            "earn_rate": str(program.earn_rate.normalize()),
            "tier": balance.tier,
            "tier_multiplier": str(multiplier.normalize()),
            "tier_bonus_points": str(tier_bonus),
            "sira_multiplier_points": str(sira_rate),
            "sira_bonus_points": str(sira_bonus),
        }
        uncapped = base + tier_bonus + sira_rate + sira_bonus
        sira = score.as_dict()
    else:
        uncapped = event.points
        breakdown = {"base_points": str(uncapped)}

    points, capped_by = uncapped, None
    if program.max_earn_per_day is not None:
        allowance = max(program.max_earn_per_day - earned_today, ZERO)
        if points > allowance:
            points, capped_by = allowance, "daily_cap"
    if points > 0:
        charged = charge(points)
        if charged < points:
            points, capped_by = charged, "budget"
    breakdown.update(
        {
            "uncapped_points": str(uncapped),
            "capped_by": capped_by,
            "capped_points": str(uncapped - points),
        }
    )

    before = balance.points_balance
    balance.points_balance += points
    balance.lifetime_earned += points
    balance.earned_today = earned_today + points
    balance.earned_day = today
    balance.last_activity_at = now
    fields = ["points_balance", "lifetime_earned", "earned_today", "earned_day", "last_activity_at"]
    if event.type == "purchase":
        balance.lifetime_spend += event.amount
        balance.purchase_count += 1
        balance.last_purchase_at = now
        fields += ["lifetime_spend", "purchase_count", "last_purchase_at"]
    if before < 0 <= balance.points_balance:
        fraud_flag_remove(balance, REFUND_DEBT_FLAG)  # the refund debt is repaid
        fields.append("fraud_flags")
    return Earning(
        points=points,
        before=before,
        fields=fields,
        details={"breakdown": breakdown, "sira": sira},
    )


def _refund(
    program: Program, balance: MemberBalance, event: EventInput, actor: Actor
) -> LedgerEntry:
    """Claws back the purchase's points in proportion to the refunded amount, cumulatively, so
    partial refunds never take more than was awarded and a full refund takes exactly that."""
    original = (
        LedgerEntry.objects.filter(
            program=program,
            balance=balance,
            type=LedgerEntry.Type.PURCHASE,
            reference=event.original_reference,
        )
        .order_by("id")
        .first()
    )
    if original is None:
        raise OriginalNotFound(original_reference=event.original_reference)
    earlier = list(original.refunds.filter(type=LedgerEntry.Type.REFUND))
    refunded_before = sum((r.amount for r in earlier), ZERO)
    clawed_before = -sum((r.points for r in earlier), ZERO)
    refunded_after = refunded_before + event.amount
    if refunded_after > original.amount:
        raise RefundExceedsOriginal(
            original_amount=str(original.amount), refunded_before=str(refunded_before)
        )
    due = points_floor(original.points * refunded_after / original.amount) - points_floor(
        original.points * refunded_before / original.amount
    )
    before = balance.points_balance
    fields = ["points_balance", "lifetime_earned", "lifetime_spend", "last_activity_at"]
    if program.refund_policy == Program.RefundPolicy.CAP_AT_AVAILABLE:
        applied = min(due, max(balance.available, ZERO))
    else:
        applied = due
    shortfall = due - applied
    balance.points_balance -= applied
    balance.lifetime_earned -= applied
    balance.lifetime_spend = max(balance.lifetime_spend - event.amount, ZERO)
    balance.last_activity_at = timezone.now()
    debt = max(-balance.points_balance, ZERO)
    if debt > 0:
        fraud_flag_add(balance, REFUND_DEBT_FLAG, reference=event.reference or "")
        fields.append("fraud_flags")
    details = {
        "breakdown": {
            "original_transaction_id": str(original.pk),
            "original_points": str(original.points),
            "refunded_amount_total": str(refunded_after),
            "clawback_due": str(due),
            "clawed_back": str(applied),
            "shortfall": str(shortfall),
            "debt": str(debt),
        },
    }
    entry = _entry_write(
        program, balance, event, actor, points=-applied, details=details, original=original
    )
    lots_settle(
        balance=balance,
        before=before,
        after=balance.points_balance,
        entry=entry,
        first_entry_id=original.pk,
    )
    # The budget gets back the cost of what the award still holds before this refund minus
    # after it: the credits of several partial refunds add up to exactly what was charged.
    budget_credit(
        program=program,
        points=applied,
        cost=_award_cost(program, original.points - clawed_before)
        - _award_cost(program, original.points - clawed_before - applied),
    )
    balance.save(update_fields=[*fields, "updated_at"])
    outbox_publish(
        program=program,
        event_type="loyalty.points.clawed_back",
        payload={**_event_payload(entry, balance), "debt": str(debt), "shortfall": str(shortfall)},
    )
    return entry


def _adjust(
    program: Program, balance: MemberBalance, event: EventInput, actor: Actor
) -> LedgerEntry:
    """An exact correction by staff: never capped; a credit is charged to the budget in full,
    a debit may not leave less than the points held by pending redemptions."""
    points = event.points
    if points > 0:
        budget_charge(program=program, points=points, allow_partial=False)
    elif balance.points_balance + points < balance.locked:
        raise InsufficientPoints(available=str(balance.available), requested=str(-points))
    before = balance.points_balance
    balance.points_balance += points
    fields = ["points_balance", "last_activity_at"]
    if points > 0:
        balance.lifetime_earned += points
        fields.append("lifetime_earned")
    balance.last_activity_at = timezone.now()
    if before < 0 <= balance.points_balance:
        fraud_flag_remove(balance, REFUND_DEBT_FLAG)  # the refund debt is repaid
        fields.append("fraud_flags")
    entry = _entry_write(
        program,
        balance,
        event,
        actor,
        points=points,
        details={"breakdown": {"base_points": str(points), "capped_by": None}},
    )
    lots_settle(balance=balance, before=before, after=balance.points_balance, entry=entry)
    if points < 0:
        budget_credit(program=program, points=-points)
    balance.save(update_fields=[*fields, "updated_at"])
    outbox_publish(
        program=program,
        event_type="loyalty.balance.adjusted",
        payload={**_event_payload(entry, balance), "reason": event.reason},
    )
    return entry


def _award_cost(program: Program, points: Decimal) -> Decimal:
    return points_cost(
        max(points, ZERO), point_value=program.point_value, currency=program.currency
    )


def _tier_multiplier(program: Program, balance: MemberBalance) -> Decimal:
    if hasattr(balance, "tier_multiplier"):  # read with the balance lock (balance_lock)
        multiplier = balance.tier_multiplier
    else:
        multiplier = (
            Tier.objects.filter(program=program, name=balance.tier)
            .values_list("earn_multiplier", flat=True)
            .first()
        )
    return multiplier if multiplier is not None else Decimal(1)


def _entry_write(
    program: Program,
    balance: MemberBalance,
    event: EventInput,
    actor: Actor,
    *,
    points: Decimal,
    details: dict,
    original: LedgerEntry | None = None,
) -> LedgerEntry:
    entry = entry_build(
        program, balance, event, actor, points=points, details=details, original=original
    )
    entry.save(force_insert=True)
    return entry


def entry_build(
    program: Program,
    balance: MemberBalance,
    event: EventInput,
    actor: Actor,
    *,
    points: Decimal,
    details: dict,
    original: LedgerEntry | None = None,
) -> LedgerEntry:
    """The event's ledger entry (unsaved), after the balance change: `details` make a replay
    answer exactly what the first call answered."""
    details = {
        **details,
        "member_id": balance.member_id,
        "fingerprint": event.fingerprint(),
        "balance": balance_snapshot(balance),
    }
    return LedgerEntry(
        program=program,
        balance=balance,
        type=event.type,
        points=points,
        amount=event.amount,
        currency=event.currency or "",
        module=event.module,
        reference=event.reference,
        original_entry=original,
        idempotency_key=event.idempotency_key,
        balance_after=balance.points_balance,
        reason=event.reason,
        details=details,
        metadata=event.metadata,
        actor_id=actor.id,
        actor_role=actor.role,
        occurred_at=event.occurred_at or timezone.now(),
    )


def balance_snapshot(balance: MemberBalance) -> dict:
    return {
        "points_balance": str(balance.points_balance),
        "locked": str(balance.locked),
        "available": str(balance.available),
        "tier": balance.tier,
    }


def _event_payload(entry: LedgerEntry, balance: MemberBalance) -> dict:
    return {
        "transaction_id": str(entry.pk),
        "member_id": balance.member_id,
        "type": entry.type,
        "points": str(entry.points),
        "balance": balance_snapshot(balance),
        "reference": entry.reference,
    }
