"""Batch ingestion: up to 1,000 events, each item atomic on its own.

Two paths give the same results, item by item, as calling `event_ingest` once per item in order
(the set-based path's one exception, near the end of a budget, is under "Two passes"):

- **Set-based** (PostgreSQL, every item an earning: purchase, referral, campaign_bonus): a
  handful of statements for the whole batch. Lock the balances and budget shards of the batch,
  look up the stored keys, run the earning rules (`ingestion.earn_apply`, the same function the
  single path calls) item by item on the balances in memory, then write every ledger entry,
  lot, outbox event and audit entry with one COPY per table, every balance with one UPDATE and
  the budget shards with one more. A refused item (frozen, fraud review, budget exhausted)
  changes nothing: the rules refuse before they change anything, and the budget is charged in
  memory only when an item is paid for. Per item it builds only what it writes and answers:
  entries and balances are model instances made without `Model.__init__`, JSON is encoded
  once (orjson, sent as jsonb's binary input), and every row of a transaction carries its one
  time.
- **Item by item** (anything else: refunds and adjustments read and change lots and earlier
  entries; or SQLite): one transaction, a savepoint per item around the single path's own
  transaction body, so one commit (one WAL flush) still serves the whole batch. Also the
  fallback of a set-based pass when one of its keys was taken by a concurrent request after
  the lookup (the unique index refuses the insert): that pass is rolled back, and its items,
  with any left for the second pass, go item by item, where that key is answered as a
  replay.

New members: a batch creates the missing balances of its members before any item runs (one
statement), where one by one each event creates its own and a refused event's transaction
rolls it back. So each transaction that runs items creates its members' missing balances
itself, first thing (`_balances_insert`), and before it commits takes back those of members
none of whose items wrote an entry (`_balances_unused_delete`): a refused item (budget
exhausted, a key reused, insufficient points) leaves no member behind, as one by one. Such a
row was never visible to another transaction; a concurrent event of that member waits for it
in its own insert (ON CONFLICT) and, once the batch commits, finds no row and creates its
own. The database lets only the transaction that inserted a balance delete it, untouched and
named by no entry (migration 0008); every balance committed stays forever. Where every member
exists, or every new member is paid, this costs nothing more than the one INSERT, which finds
every balance and writes nothing.

Two passes (set-based): concurrent batches of one program share a few members, and a batch that
waited for all of its balances would wait for the whole of another batch. So a first transaction
creates the missing balances, locks the balances that are free (SKIP LOCKED), runs and commits
the items of those members; a second transaction runs the items left, waiting for their balances
in order (creating again the balances the first took back: its new members left). Left for the
second pass: every item of a member whose balance was busy, and every item of a member one of
whose items carries a key that an earlier left item carries (else it would take the key first),
until none is added; the items of one member thus stay in one pass, in their order, and each
item's answer is the one `event_ingest` gives: a key committed by the first pass and repeated in
the second is answered from the stored entry (a replay, or `idempotency_key_reused`). The one
difference: the budget pays the first pass's items before the second's, so near its end the item
refused (or cut to what is left) may be an earlier item of a busy member where, one by one, it
would have been a later item of another. The second pass's entries also come after (ids,
created_at) the first's.

Deadlock freedom: a pass's balance INSERT comes first and, while it may wait, holds only the new
rows it inserted before, all earlier in the one (program, member) order of every batch's insert;
whoever waits for one of those rows is inserting it too (a batch, in that order; a single event,
before it takes anything else), so no wait cycle can pass through them. The first pass then
never waits for a balance. Each pass then takes one free budget shard of each of its programs
(SKIP LOCKED: it never waits, as `budget_charge`'s fast path), so concurrent batches of one
program do not queue for its shards; the second pass takes its balances, before any shard, in
(program id, balance id) order, the order the workers' chunks use too. When a charge does not
fit in the shard held (near the limit), or a program has no free shard, the pass is rolled back
whole and runs again taking every shard of its programs in (program, shard) order. Every other
writer takes a balance before shards, and whoever waits for shards already holds all the
balances it needs and takes shards only in (program, shard) order, so no wait cycle can form. (A
pass may also wait on the unique key index, as the batch always could, only for a concurrent
writer of one of its keys for another member: a key of the same member is that member's
balance's, which the first pass leaves and the second waits for before it looks the keys up. Its
entries are written in (program, key) order, so two batches wait for each other's keys in that
one order, never in a cycle; were a deadlock to choose a pass all the same, it is rolled back
and its items go item by item, as after a key conflict.)
"""

import ipaddress
import json
import operator
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Container
from decimal import Decimal

import orjson
import psycopg
from django.db import DEFAULT_DB_ALIAS, IntegrityError, OperationalError, connection, transaction
from django.db.models import DateField, DecimalField, IntegerField
from django.db.models.base import ModelState
from django.utils import timezone

from audit.integrity import audit_key, canonical_json, entry_digester, normalise_ip
from audit.models import AuditEntry
from audit.pii import FREE_TEXT_KEYS, PII_KEYS, REMOVED_KEYS, pii_scrub
from audit.services import CREDENTIAL_ID_MAX, USER_AGENT_MAX

from ..actors import Actor
from ..errors import BudgetExhausted, DomainError, LedgerLimitExceeded, OriginalNotFound
from ..models import BudgetShard, LedgerEntry, MemberBalance, OutboxEvent, PointLot, Program
from ..money import ZERO, points_affordable, points_cost
from .balances import balance_defaults, entry_tier, lot_expiry, serial_sequence
from .budget import SPENT_MAX
from .ingestion import (
    EARN_FIELDS,
    EARN_TYPES,
    EventInput,
    IngestResult,
    deadlock_retried,
    earn_apply,
    entry_audit_after,
    entry_values,
    event_replay,
    event_validate,
    ingest_in_transaction,
    is_deadlock,
    replay_answer,
)
from .ingestion.key_holds import key_held, key_holder
from .jobs import bulk_set

MAX_BATCH = 1000
# The unique index that makes a key exactly-once; a conflict on it sends the batch item by item.
KEY_CONSTRAINT = "ledger_unique_idempotency_key"
Items = list[tuple[Program, EventInput]]
# The set-based path keys programs by `program.id.int`, their "program key" (`pid`): it hashes
# program ids some 26 times an item, and a UUID's hash is Python code (~0.25 us) where an
# int's is C (the programs of one batch are distinct rows, so their ints are distinct too).


def _program_ids(programs: dict) -> list[uuid.UUID]:
    """The ids of {program key: program}, as a query's parameter."""
    return [program.id for program in programs.values()]


def events_ingest_batch(*, items: Items, actor: Actor) -> list[IngestResult | DomainError]:
    """Ingests each item exactly once; returns, in order, its result or its domain error."""
    if len(items) > MAX_BATCH:
        raise ValueError(f"a batch holds at most {MAX_BATCH} events")
    results: list[IngestResult | DomainError | None] = [None] * len(items)
    todo = []
    for index, (program, event) in enumerate(items):
        try:
            event_validate(program, event)
        except DomainError as error:
            results[index] = error
        else:
            todo.append(index)
    if not todo:
        return results  # type: ignore[return-value]
    if connection.vendor == "postgresql" and all(items[i][1].type in EARN_TYPES for i in todo):
        programs = {items[i][0].id.int: items[i][0] for i in todo}
        tiers = _tiers(programs)  # read once for both passes
        # Two passes: the members whose balance is free now, without waiting; then the rest,
        # waiting for their balances in order (the module docstring says why this is safe).
        # Each pass creates the missing balances of its members itself ("New members").
        pending = todo
        create = {(items[i][0].id.int, items[i][1].member_id) for i in todo}
        for wait in (False, True):
            try:
                pending, removed = _ingest_set_pass(
                    items, pending, results, actor, tiers, create=create, wait=wait
                )
            except (IntegrityError, OperationalError, psycopg.Error) as exc:
                if not (_is_key_conflict(exc) or is_deadlock(exc)):
                    raise
                # A concurrent request committed one of this pass's keys after the lookup (or,
                # which the entries' key order should prevent, a deadlock chose this pass):
                # the pass was rolled back; the item path answers that item as a replay.
                for index in pending:
                    results[index] = None
                break
            if not pending:
                return results  # type: ignore[return-value]
            # The first pass took back the balances it created for the members it left: the
            # second creates them again (every other member of it has a committed balance).
            create = {(items[i][0].id.int, items[i][1].member_id) for i in pending} & removed
        todo = pending
    _ingest_each(items, todo, results, actor)
    return results  # type: ignore[return-value]


def _ingest_set_pass(
    items: Items,
    todo: list[int],
    results: list,
    actor: Actor,
    tiers: dict,
    *,
    create: set,
    wait: bool,
) -> tuple[list[int], set]:
    """One transaction of the set-based path over `todo`, creating the missing balances of
    the members of `create`; returns the items it left (busy members', when not `wait`) and
    the members whose balances it created and took back."""
    try:
        return _ingest_set(
            items, todo, results, actor, tiers, create=create, all_shards=False, wait=wait
        )
    except _ShardsShort:
        # One shard per program could not pay for the batch, or every shard of a program was
        # busy: rolled back whole (the balances it created too); again, with every shard in
        # order.
        for index in todo:
            results[index] = None
        return _ingest_set(
            items, todo, results, actor, tiers, create=create, all_shards=True, wait=wait
        )


def _is_key_conflict(exc: Exception) -> bool:
    error = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    diag = getattr(error, "diag", None)
    return getattr(diag, "constraint_name", None) == KEY_CONSTRAINT


# --- the set-based path ------------------------------------------------------------------------


class _ShardsShort(Exception):
    """The batch holds one shard of a program, and a charge does not fit in it."""


class _Budget:
    """A program's budget shards, locked: charges in memory with exactly the outcome of
    `budget.budget_charge` for the same sequence of charges, then written in one UPDATE.

    With every shard held, `budget_charge` pays in full when the cost fits in what is left of
    the whole limit (its one-shard fast path is only a cheaper way to the same answer), else
    pays the points the remainder affords, else refuses. Holding only some shards (`whole`
    false), a charge that fits in what they have left is paid in full, which is that same
    answer (the whole limit has at least as much left); any other raises _ShardsShort, and
    the batch runs again holding every shard."""

    def __init__(self, program: Program, shards: list[BudgetShard], *, whole: bool) -> None:
        self.program = program
        self.shards = shards
        self.whole = whole
        # The shards, not `program.budget_limit`, say whether a limit applies: the limit may
        # have been set or lifted since `program` was read (budget_charge decides the same).
        self.limited = bool(shards) and shards[0].allocated is not None
        self.remaining = (
            sum((s.allocated - s.spent for s in shards), ZERO) if self.limited else None
        )
        # What the held shards' `spent` can still take (NUMERIC(20,2)): binds only without a
        # limit, which otherwise keeps every shard under its allocation.
        self.room = sum((SPENT_MAX - s.spent for s in shards), ZERO)
        self.cost = ZERO

    def charge(self, points: Decimal) -> Decimal:
        program = self.program
        cost = points_cost(points, point_value=program.point_value, currency=program.currency)
        if self.limited and cost > self.remaining:
            if not self.whole:
                raise _ShardsShort
            points = min(points, points_affordable(self.remaining, point_value=program.point_value))
            if points <= 0:
                raise BudgetExhausted(
                    remaining_budget=str(self.remaining), currency=program.currency
                )
            cost = points_cost(points, point_value=program.point_value, currency=program.currency)
        if not self.limited and self.cost + cost > self.room:
            if not self.whole:
                raise _ShardsShort
            raise LedgerLimitExceeded(program_id=str(program.pk))
        if self.limited:
            self.remaining -= cost
        self.cost += cost
        return points

    def changed_shards(self) -> list[BudgetShard]:
        """The shards whose `spent` grows: each takes what fits under its allocation (without
        a limit, under SPENT_MAX: the first one takes it all but at that edge), in shard order
        (the cost never exceeds the sum of what is left, checked charge by charge)."""
        if self.cost <= 0 or not self.shards:
            return []
        changed, left = [], self.cost
        for shard in self.shards:
            ceiling = shard.allocated if self.limited else SPENT_MAX
            take = min(ceiling - shard.spent, left)
            if take > 0:
                shard.spent += take
                left -= take
                changed.append(shard)
            if left <= 0:
                break
        if left > 0:  # cannot happen: every charge was checked against the remainder
            raise AssertionError("budget charged past its shards' allocations")
        return changed


@transaction.atomic(durable=True)
def _ingest_set(
    items: Items,
    todo: list[int],
    results: list,
    actor: Actor,
    tiers: dict,
    *,
    create: set,
    all_shards: bool,
    wait: bool,
) -> tuple[list[int], set]:
    """Runs the items of `todo` whose balances it locks; returns the others (busy members'
    when not `wait`, and any whose balance is missing: they go item by item), and the members
    of `create` whose balances it created and took back (none of their items wrote an entry).
    """
    programs = {items[i][0].id.int: items[i][0] for i in todo}
    members = {(items[i][0].id.int, items[i][1].member_id) for i in todo}
    # First, before any lock: the members' missing balances, in this transaction ("New
    # members" in the module docstring).
    created = _balances_insert(programs, create, tiers) if create else {}
    balances = _balances_lock(programs, members, tiers, wait=wait)
    left = _left_for_later(items, todo, members - balances.keys())
    if left:
        later = set(left)
        todo = [i for i in todo if i not in later]
    written = (
        _ingest_locked(items, todo, results, actor, programs, balances, all_shards) if todo else ()
    )
    return left, _balances_unused_delete(created, written)


def _ingest_locked(
    items: Items,
    todo: list[int],
    results: list,
    actor: Actor,
    programs: dict,
    balances: dict,
    all_shards: bool,
) -> Container[int]:
    """The items of `todo`, whose balances `_ingest_set` holds; returns the ids of the
    balances that got an entry."""
    if all_shards:
        budgets = {
            pid: _Budget(programs[pid], shards, whole=True)
            for pid, shards in _shards_lock(programs).items()
        }
    else:
        budgets = {
            pid: _Budget(programs[pid], [shard], whole=False)
            for pid, shard in _one_shard_each(programs).items()
        }
    keys = {(items[i][0].id.int, items[i][1].idempotency_key) for i in todo}
    stored = _stored_entries(programs, keys)
    held = _held_keys(programs, keys - stored.keys())
    # One time for the whole batch (one transaction): the rules' "now", and every row's
    # created_at, so a program's lot expiry is computed once.
    now = timezone.now()

    # The entry of each key: stored before, or written earlier in this batch (first wins).
    answered: dict[tuple, LedgerEntry] = dict(stored)
    new = []  # (program, balance, entry, balance before) in item order
    touched: dict[int, MemberBalance] = {}
    flags_changed: dict[int, MemberBalance] = {}
    for index in todo:
        program, event = items[index]
        key = (program.id.int, event.idempotency_key)
        first = answered.get(key)
        try:
            if first is not None:
                # A repeat: its first answer (or idempotency_key_reused), as `event_ingest`
                # would give one by one.
                results[index] = replay_answer(first, event)
                continue
            if key in held:
                raise key_held(held[key], event.idempotency_key)
            balance = balances[(key[0], event.member_id)]
            earning = earn_apply(
                program=program,
                balance=balance,
                event=event,
                now=now,
                charge=budgets[key[0]].charge,
            )
        except DomainError as error:
            results[index] = error
            continue
        entry = _entry_new(program, balance, event, actor, earning, now)
        answered[key] = entry
        new.append((program, balance, entry, earning.before))
        touched[balance.id] = balance
        if "fraud_flags" in earning.fields:
            flags_changed[balance.id] = balance
        results[index] = IngestResult(entry=entry)
    if new:
        _write(new, list(touched.values()), list(flags_changed.values()), budgets, actor, now)
    return touched.keys()


def _left_for_later(items: Items, todo: list[int], busy: set) -> list[int]:
    """The items of `todo` the first pass leaves to the second: every item of a `busy`
    member, and every item of a member who has an item whose key an earlier left item
    carries (run first, that item would take the key its earlier twin takes one by one),
    until no more are added. A later twin of a key run in the first pass is fine: the second
    pass finds the key stored and answers it as `event_ingest` would, a replay or a reuse."""
    if not busy:
        return []
    busy = set(busy)
    while True:
        first_left: dict = {}  # (program key, key): the index of its first left item
        for index in todo:
            program, event = items[index]
            if (program.id.int, event.member_id) in busy:
                first_left.setdefault((program.id.int, event.idempotency_key), index)
        more = {
            (program.id.int, event.member_id)
            for index in todo
            for program, event in (items[index],)
            if first_left.get((program.id.int, event.idempotency_key), index) < index
        } - busy
        if not more:
            return [i for i in todo if (items[i][0].id.int, items[i][1].member_id) in busy]
        busy |= more


def _model_new(model, values: dict, related: dict | None = None):
    """An instance of `model` as a query loads it (not `adding`), from its attribute values,
    without `Model.__init__`: that costs ~20 us for 20 fields and two foreign keys, and the
    batch makes 2,000 instances (entries, balances) that it only computes, writes and answers.
    (No model of this path has pre_init/post_init receivers; a field left out of `values` is
    deferred, and reading it would cost a query: pass every field read.)"""
    obj = model.__new__(model)
    obj.__dict__.update(values)
    state = obj._state = ModelState()
    state.adding = False
    state.db = DEFAULT_DB_ALIAS  # `connection`'s (asking the proxy costs ~2 us a call)
    if related:
        state.fields_cache = related  # the foreign keys' objects: no query to read them
    return obj


def _entry_new(program, balance, event, actor, earning, now) -> LedgerEntry:
    """`entry_build`'s entry (tests/loyalty/test_batch.py holds them equal, field by field),
    stamped `now`, its id given by `_write`."""
    values = entry_values(
        program,
        balance,
        event,
        actor,
        points=earning.points,
        details=earning.details,
        fingerprint=event.fingerprint(),
        original_id=None,
        occurred_at=event.occurred_at or now,
        created_at=now,
    )
    return _model_new(LedgerEntry, values, {"program": program, "balance": balance})


# Plain SQL: the ORM took ~0.6 ms of CPU a batch to build this query, six times running it.
_TIERS_SQL = (
    "SELECT program_id, name, earn_multiplier FROM loyalty_tier"
    " WHERE program_id = ANY(%s::uuid[]) ORDER BY program_id, rank"
)


def _tiers(programs: dict) -> dict:
    """{program key: [(name, earn multiplier)] by rank}, for all programs in one query."""
    tiers: dict = {pid: [] for pid in programs}
    with connection.cursor() as cursor:
        cursor.execute(_TIERS_SQL, [_array_of([str(p.id) for p in programs.values()])])
        for program_id, name, multiplier in cursor.fetchall():
            tiers[program_id.int].append((name, multiplier))
    return tiers


# The balance columns the earning rules, the entry and the balance update read. The others
# (timestamps only written, the encrypted meta) stay deferred: never read on this path.
_BALANCE_READ = [
    "id", "program_id", "member_id", "points_balance", "locked", "lifetime_earned",
    "lifetime_redeemed", "lifetime_spend", "tier", "churn_risk", "engagement_score",
    "fraud_flags", "is_frozen", "earned_day", "earned_today", "purchase_count",
    "last_purchase_at",
]  # fmt: skip


def _keyed_sql(name: str) -> str:
    """Rows (program_id, `name`, p, n) from `_keyed_arrays`' three arrays: the programs' ids,
    and per row its program's place among them and its text. A row's program goes as that
    place, not as its id: the server parses each uuid of an array of 1,000 (0.5 us), where a
    small int costs 0.1."""
    return (
        f"SELECT (%s::uuid[])[m.p] AS program_id, m.{name}, m.p, m.n"  # noqa: S608 (a name of ours)
        f" FROM unnest(%s::int[], %s::text[]) WITH ORDINALITY AS m(p, {name}, n)"
    )


_MEMBERS_SQL = _keyed_sql("member_id")
# One statement locks every balance of the batch, in the global order (program, balance id).
# Columns by name, not b.*: see balances._BALANCE_LOCK_SQL on prepared statements.
_BALANCES_LOCK_SQL = (
    "SELECT "  # noqa: S608 (the model's columns)
    + ", ".join(f'b."{MemberBalance._meta.get_field(name).column}"' for name in _BALANCE_READ)
    + f" FROM loyalty_memberbalance b JOIN ({_MEMBERS_SQL}) AS k"
    " ON b.program_id = k.program_id AND b.member_id = k.member_id"
    " ORDER BY b.program_id, b.id FOR UPDATE OF b"
)
# The first pass's: never waits, leaves out the balances another transaction holds.
_BALANCES_LOCK_FREE_SQL = _BALANCES_LOCK_SQL + " SKIP LOCKED"
_TIMESTAMPTZ_LOADER = psycopg.adapters.get_loader(
    psycopg.postgres.types["timestamptz"].oid, psycopg.pq.Format.TEXT
)


def _balance_insert_sql() -> tuple[str, list]:
    """`INSERT ... SELECT FROM unnest ... ON CONFLICT DO NOTHING` of new balances: program
    and member from `_MEMBERS_SQL`, the entry tier from an array of one per program, every
    other column the model's default. (Django's `bulk_create` sends 19 parameters per row;
    building and binding them cost more than the rest of the batch.)"""
    names, values = balance_defaults()
    sql = (
        f"INSERT INTO {MemberBalance._meta.db_table}"  # noqa: S608 (model's columns)
        f" (program_id, member_id, tier, {', '.join(names)})"
        f" SELECT v.program_id, v.member_id, (%s::text[])[v.p], {', '.join(c for c, _ in values)}"
        f" FROM ({_MEMBERS_SQL}) AS v"
        # Members who have a balance (most) are skipped by one index probe, which costs
        # about a third less than an insert attempt refused by ON CONFLICT; ON CONFLICT still
        # settles a balance created meanwhile by a concurrent request.
        " WHERE NOT EXISTS (SELECT FROM loyalty_memberbalance x"
        "  WHERE x.program_id = v.program_id AND x.member_id = v.member_id)"
        " ORDER BY v.n ON CONFLICT (program_id, member_id) DO NOTHING"
        # The rows this statement inserted, which the transaction takes back if unused.
        " RETURNING id, program_id, member_id"
    )
    return sql, [v for _, v in values]


def _keyed_arrays(programs: dict, rows: list) -> tuple[list[str], list]:
    """`_keyed_sql`'s three array literals for `rows` ((program key, text) in their order),
    and the program keys in the order of the first (programs' ids, in their text's order)."""
    text = {pid: str(program.id) for pid, program in programs.items()}
    ordered_programs = sorted(programs, key=text.__getitem__)
    place = {pid: str(n) for n, pid in enumerate(ordered_programs, start=1)}
    arrays = [
        _array_of([text[pid] for pid in ordered_programs]),
        _array_of([place[pid] for pid, _ in rows]),
        _array_of([_quoted(value) for _, value in rows]),
    ]
    return arrays, ordered_programs


def _members_arrays(programs: dict, members: set) -> tuple[list[str], list]:
    """`_keyed_arrays` of the members in (program, member) order, the order of every lock."""
    text = {pid: str(program.id) for pid, program in programs.items()}
    return _keyed_arrays(programs, sorted(members, key=lambda m: (text[m[0]], m[1])))


def _balances_insert(programs: dict, members: set, tiers: dict) -> dict[int, tuple]:
    """Creates the missing balances of `members` ((program key, member id)) in the caller's
    transaction, first thing in it; returns the rows it inserted, {balance id: member}.

    It may wait for a concurrent transaction's uncommitted row of the same member (ON
    CONFLICT settles it once that one ends: a row it committed is that member's balance; a
    row it took back, or rolled back, leaves this insert to create its own). While it waits
    it holds only the rows it inserted before, earlier in the one (program, member) order
    every batch inserts in, on both paths: two batches creating the same new members wait for
    each other in that order, never in a cycle; and a single event waiting for one of these
    rows holds nothing a batch waits for (it creates its balance first, before any other
    member's row, a shard or a key). Where every balance exists, it writes nothing."""
    # New members start in the lowest tier (`entry_tier`: "basic" for a program without tiers).
    arrays, ordered_programs = _members_arrays(programs, members)
    insert_sql, defaults = _balance_insert_sql()
    entry_tiers = _array_of(
        [_quoted(tiers[pid][0][0] if tiers[pid] else "basic") for pid in ordered_programs]
    )
    with connection.cursor() as cursor:
        cursor.execute(insert_sql, [entry_tiers, *defaults, *arrays])
        rows = cursor.fetchall()
    return {pk: (program_id.int, member_id) for pk, program_id, member_id in rows}


def _balances_unused_delete(created: dict[int, tuple], written) -> set[tuple]:
    """Takes back, before its transaction commits, the balances it created (`created`, {id:
    member}) that got no entry (not in `written`, the ids of those that did); returns their
    members. No statement when there are none: every member existed, or every new one was
    paid.

    Why a new member's balance is created in the transaction that runs its items, and taken
    back there: one by one, a refused event writes nothing, its balance included (its
    transaction rolls back); a batch creates every missing balance before any item runs, so
    the balance of a member whose every item was refused (budget exhausted, a key reused,
    insufficient points) would otherwise stay, a member who answers on reads and joins
    campaigns. Created and taken back in one transaction, such a row is never seen by
    another (uncommitted): a concurrent event of that member waits on it in its own insert
    and, once this commits, finds no row and creates its own. The database refuses any other
    DELETE of a balance (loyalty.models._BALANCE_DELETE_FUNC), and this one names only rows
    this transaction inserted, with no entry."""
    unused = [pk for pk in created if pk not in written]
    if not unused:
        return set()
    table = MemberBalance._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The ids this transaction's INSERT returned, for this transaction only: the
            # trigger lets a balance be deleted only when it is one of them (a row's xmin
            # alone also matched a committed row this transaction had updated).
            cursor.execute(
                "SELECT set_config('loyalty.balances_inserted', %s, true)",
                [",".join(map(str, unused))],
            )
        cursor.execute(
            f"DELETE FROM {table} WHERE id IN ({', '.join(['%s'] * len(unused))})"  # noqa: S608
            " AND NOT EXISTS (SELECT 1 FROM loyalty_ledgerentry e"
            f" WHERE e.balance_id = {table}.id)",
            unused,
        )
    return {created[pk] for pk in unused}


_NO_TIER = (None, None)  # a tier the program no longer has (balances.tier_of)


def _balances_lock(programs: dict, members: set, tiers: dict, *, wait: bool) -> dict:
    """Locks the members' balances, each carrying its tier's earn multiplier and rank as
    `balance_lock` gives them: {(program key, member id): balance}. Not `wait`: only those free
    now (SKIP LOCKED), the others are left out."""
    arrays, _ = _members_arrays(programs, members)
    tier_rows = {
        (pid, name): (multiplier, rank)
        for pid, ranked in tiers.items()
        for rank, (name, multiplier) in enumerate(ranked)
    }
    locked = {}
    with connection.cursor() as cursor:
        # last_purchase_at by psycopg's own loader (C, 0.2 us a value): Django's, which only
        # gives it the zone it already has (the connection's), is Python (3.8 us).
        cursor.cursor.adapters.register_loader("timestamptz", _TIMESTAMPTZ_LOADER)
        cursor.execute(_BALANCES_LOCK_SQL if wait else _BALANCES_LOCK_FREE_SQL, arrays)
        rows = cursor.fetchall()
    flags_from_db = MemberBalance._meta.get_field("fraud_flags").from_db_value
    for row in rows:
        values = dict(zip(_BALANCE_READ, row, strict=True))
        flags = values["fraud_flags"]  # jsonb arrives as its text, as the ORM reads it
        values["fraud_flags"] = [] if flags == "[]" else flags_from_db(flags, None, connection)
        pid = values["program_id"].int
        balance = _model_new(MemberBalance, values, {"program": programs[pid]})
        balance.tier_multiplier, balance.tier_rank = tier_rows.get((pid, balance.tier), _NO_TIER)
        locked[(pid, balance.member_id)] = balance
    return locked


def _shards_lock(programs: dict) -> dict:
    """Every budget shard of the batch's programs, locked in (program, shard) order."""
    shards: dict = {pid: [] for pid in programs}
    for shard in (
        BudgetShard.objects.select_for_update()
        .filter(program_id__in=_program_ids(programs))
        .order_by("program_id", "shard")
    ):
        shards[shard.program_id.int].append(shard)
    return shards


# A random free shard of each program, as budget_charge's fast path takes one: it never waits
# (SKIP LOCKED), so it may come after the balance locks in any order. Concurrent batches of
# one program then hold different shards instead of queueing for all of them. Read by a
# cursor, the shards made by `_model_new`: RawQuerySet took ~0.4 ms of CPU a batch more.
# (Columns by name, not s.*: see balances._BALANCE_LOCK_SQL on prepared statements.)
_SHARD_FIELDS = [field.attname for field in BudgetShard._meta.concrete_fields]
_ONE_SHARD_SQL = (
    "SELECT "  # noqa: S608 (the model's columns)
    + ", ".join(f's."{field.column}"' for field in BudgetShard._meta.concrete_fields)
    + " FROM unnest(%s::uuid[]) AS p(id) CROSS JOIN LATERAL ("
    " SELECT * FROM loyalty_budgetshard b WHERE b.program_id = p.id"
    " ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED) AS s"
)


def _one_shard_each(programs: dict) -> dict:
    """{program key: one shard of it, locked}; _ShardsShort when a program has none free."""
    with connection.cursor() as cursor:
        cursor.execute(_ONE_SHARD_SQL, [_program_ids(programs)])
        rows = cursor.fetchall()
    found = {}
    for row in rows:
        shard = _model_new(BudgetShard, dict(zip(_SHARD_FIELDS, row, strict=True)))
        found[shard.program_id.int] = shard
    if len(found) < len(programs):
        raise _ShardsShort
    return found


_STORED_SQL = (
    f"SELECT e.id FROM loyalty_ledgerentry e JOIN ({_keyed_sql('idempotency_key')}) AS k"  # noqa: S608
    " ON e.program_id = k.program_id AND e.idempotency_key = k.idempotency_key"
    # The partial unique index's predicate, so a generic plan may still use that index.
    " WHERE e.idempotency_key <> ''"
)


# The approvals app's table: see ingestion.key_holds.
_HELD_SQL = (
    "SELECT r.program_id, r.ledger_key, r.id FROM approvals_approvalrequest r"  # noqa: S608
    f" JOIN ({_keyed_sql('ledger_key')}) AS k"
    " ON r.program_id = k.program_id AND r.ledger_key = k.ledger_key"
    " WHERE r.status = 'pending' AND r.ledger_key <> '' AND r.expires_at > now()"
)


def _held_keys(programs: dict, keys: set) -> dict:
    """{(program key, key): the pending approval request holding it}, in one query."""
    if not keys:
        return {}
    arrays, _ = _keyed_arrays(programs, list(keys))
    with connection.cursor() as cursor:
        cursor.execute(_HELD_SQL, arrays)
        return {(program_id.int, key): holder for program_id, key, holder in cursor.fetchall()}


def _stored_entries(programs: dict, keys: set) -> dict:
    """{(program key, key): entry} of the keys already written, in one query. Read after the
    balance locks: a repeat committed by a request we waited for is seen here."""
    arrays, _ = _keyed_arrays(programs, list(keys))
    with connection.cursor() as cursor:
        cursor.execute(_STORED_SQL, arrays)
        ids = [row[0] for row in cursor.fetchall()]
    if not ids:
        return {}
    return {
        (e.program_id.int, e.idempotency_key): e for e in LedgerEntry.objects.filter(pk__in=ids)
    }


def _write(new: list, balances: list, flags_changed: list, budgets: dict, actor: Actor, now):
    """Every row of the batch's awards, one statement (or COPY) per table."""
    _entries_copy([entry for _, _, entry, _ in new])
    # Lots and outbox rows go straight from tuples: nothing reads them back, and a model
    # instance per row costs more than its COPY.
    lots = []
    expiry: dict = {}  # per program: every entry of the batch is stamped `now`
    for program, balance, entry, before in new:
        gained = max(entry.balance_after, ZERO) - max(before, ZERO)
        if gained > 0:  # a gain first repays any refund debt; the rest forms a lot
            pid = program.id.int
            if pid not in expiry:
                expiry[pid] = lot_expiry(program, now)
            lots.append((balance.id, program.id, entry.id, gained, gained, now, expiry[pid]))
    _copy_rows(
        PointLot,
        ["balance_id", "program_id", "entry_id", "points", "remaining", "earned_at",
         "expires_at"],
        lots,
    )  # fmt: skip
    for balance in balances:
        balance.updated_at = now
    _rows_set(MemberBalance, balances, [*EARN_FIELDS, "updated_at"])
    if flags_changed:
        MemberBalance.objects.bulk_update(flags_changed, ["fraud_flags"])
    shards = [shard for budget in budgets.values() for shard in budget.changed_shards()]
    bulk_set(BudgetShard, shards, ["spent"])
    paid = [item for item in new if item[2].points > 0]
    ids = _uuid4s(len(paid))
    text = {program.id.int: str(program.id) for program, *_ in paid}
    _copy_rows(
        OutboxEvent,
        ["id", "merchant_id", "program_id", "event_type", "payload", "created_at"],
        [
            (
                ids[i],
                program.merchant_id,
                program.id,
                "loyalty.points.earned",
                # ingestion._event_payload, with the balance as it was after this item.
                _jsonb(
                    {
                        "program_id": text[program.id.int],
                        "transaction_id": str(entry.id),
                        "member_id": balance.member_id,
                        "type": entry.type,
                        "points": str(entry.points),
                        "balance": entry.details["balance"],
                        "reference": entry.reference,
                    }
                ),
                now,
            )
            for i, (program, balance, entry, _) in enumerate(paid)
        ],
        encoded={"id"},
    )
    _copy_rows(AuditEntry, _AUDIT_FIELDS, _audit_rows(new, actor, now), encoded={"ip"})


# The version and variant bits of a version 4 UUID, set byte by byte through a table.
_VERSION_4 = bytes((byte & 0x0F) | 0x40 for byte in range(256))  # byte 6
_VARIANT_RFC_4122 = bytes((byte & 0x3F) | 0x80 for byte in range(256))  # byte 8


def _uuid4s(count: int) -> list[bytes]:
    """`count` random version 4 UUIDs, as `uuid.UUID(bytes=random, version=4)` makes them, in
    their 16 bytes (uuid's binary form): the random bytes drawn in one call (a system call
    per row otherwise), the version and variant set for all at once (a UUID object per row
    cost 1.3 us)."""
    data = bytearray(os.urandom(16 * count))
    data[6::16] = data[6::16].translate(_VERSION_4)
    data[8::16] = data[8::16].translate(_VARIANT_RFC_4122)
    data = bytes(data)
    return [data[start : start + 16] for start in range(0, len(data), 16)]


# Every table of this path is written by COPY in binary: psycopg sends numbers and times as
# they are stored (no text to format here nor to parse there), measured -2 us of Python and
# -0.5 us of PostgreSQL per row.
_BINARY_TYPES = {
    "AutoField": "int4", "BigAutoField": "int8", "IntegerField": "int4",
    "BigIntegerField": "int8", "PositiveIntegerField": "int4", "SmallIntegerField": "int2",
    "PositiveSmallIntegerField": "int2", "DecimalField": "numeric", "CharField": "text",
    "TextField": "text", "UUIDField": "uuid", "DateTimeField": "timestamptz",
    "DateField": "date", "BooleanField": "bool", "GenericIPAddressField": "inet",
    # JSON goes as bytes already in jsonb's binary form (`_jsonb`): psycopg sends bytes
    # as they are, and the column's own type (jsonb) reads them.
    "JSONField": "bytea",
}  # fmt: skip


def _copy_types(fields) -> list[str]:
    """The binary COPY type of each field (a foreign key: its target's)."""
    types = []
    for field in fields:
        target = field.target_field if field.is_relation else field
        name = _BINARY_TYPES.get(target.get_internal_type())
        if name is None:
            raise TypeError(f"no binary COPY type for {field}")
        types.append(name)
    return types


# jsonb's binary input is a version byte (1) and the JSON text.
_JSONB_V1 = b"\x01"
_JSONB_EMPTY = _JSONB_V1 + b"{}"


def _jsonb(value) -> bytes:
    """`value` as jsonb's binary input, encoded by orjson (a tenth of json.dumps' time, and
    jsonb reads both texts to the same value)."""
    try:
        return _JSONB_V1 + orjson.dumps(value)
    except TypeError:  # orjson refuses ints past 64 bits and non-text keys, json does not
        return _JSONB_V1 + json.dumps(value).encode()


_ENTRY_FIELDS = LedgerEntry._meta.concrete_fields
_ENTRY_TYPES = _copy_types(_ENTRY_FIELDS)
_entry_row = operator.itemgetter(*(f.attname for f in _ENTRY_FIELDS))  # of the __dict__
_ENTRY_DETAILS_AT = [f.attname for f in _ENTRY_FIELDS].index("details")
_ENTRY_METADATA_AT = [f.attname for f in _ENTRY_FIELDS].index("metadata")
_ENTRIES_COPY_SQL = (
    f"COPY {LedgerEntry._meta.db_table}"
    f" ({', '.join(connection.ops.quote_name(f.column) for f in _ENTRY_FIELDS)})"
    " FROM STDIN (FORMAT BINARY)"
)


# The bytea dumper psycopg's set_types picks (by oid) is its DB-API one, Python code that also
# unwraps `Binary`; the one it has for `bytes` is C: 0.3 -> 0.1 us a value, six an item.
_BYTES_DUMPER = psycopg.adapters.get_dumper(bytes, psycopg.adapt.PyFormat.BINARY)


def _binary_copy(cursor, sql: str) -> psycopg.Copy:
    """The COPY of `sql` on `cursor` (Django's), its bytes values written by the C dumper."""
    cursor.cursor.adapters.register_dumper(bytes, _BYTES_DUMPER)
    return cursor.cursor.copy(sql)


def _entries_copy(entries: list[LedgerEntry]) -> None:
    """The entries, with ids drawn from the sequence in item order (the balance_after chain
    follows ids), written in (program, idempotency key) order: a key that a concurrent
    writer holds uncommitted is waited for as its row is inserted, so every batch waits for
    keys in that one order, and two batches carrying the same keys in other orders cannot
    wait for each other in a cycle (the second to reach a key then fails on it, and its items
    go the item path, which answers them as replays)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(%s::regclass) FROM generate_series(1, %s)",
            [serial_sequence(LedgerEntry), len(entries)],
        )
        for entry, (pk,) in zip(entries, cursor.fetchall(), strict=True):
            entry.id = pk
        in_key_order = sorted(entries, key=lambda e: (e.program_id.int, e.idempotency_key))
        with _binary_copy(cursor, _ENTRIES_COPY_SQL) as copy:
            copy.set_types(_ENTRY_TYPES)
            for entry in in_key_order:
                row = list(_entry_row(entry.__dict__))
                row[_ENTRY_DETAILS_AT] = _jsonb(row[_ENTRY_DETAILS_AT])
                metadata = row[_ENTRY_METADATA_AT]
                row[_ENTRY_METADATA_AT] = _jsonb(metadata) if metadata else _JSONB_EMPTY
                copy.write_row(row)


def _rows_set(model, objs: list, fields: list[str]) -> None:
    """`jobs.bulk_set` (one `UPDATE ... FROM unnest(arrays)`), with each array sent as one
    array literal built here: psycopg adapting 1,000 values one by one per column costs more
    than the statement. For numbers, dates, times and booleans, whose text never needs
    quoting in an array literal (which `_literal_texts` checks by field type). A column whose
    rows all take one value (the batch's time and day: every balance's `updated_at` and
    `last_activity_at`, mostly `last_purchase_at` and `earned_day`) is set from that one
    value, which PostgreSQL then reads once instead of once a row."""
    meta = model._meta
    key, *columns = [meta.pk, *(meta.get_field(name) for name in fields)]
    qn = connection.ops.quote_name
    unnested = [(key, _literal_texts([getattr(obj, key.attname) for obj in objs], key))]
    sets, one_values = [], []
    for column in columns:
        name = qn(column.column)
        texts = _literal_texts([getattr(obj, column.attname) for obj in objs], column)
        if len(set(texts)) == 1:
            sets.append(f"{name} = %s::{column.db_type(connection)}")
            one_values.append(None if texts[0] == "NULL" else texts[0])
        else:
            sets.append(f"{name} = v.{name}")
            unnested.append((column, texts))
    casts = ", ".join(f"%s::{column.db_type(connection)}[]" for column, _ in unnested)
    names = ", ".join(qn(column.column) for column, _ in unnested)
    key_name = qn(key.column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {qn(meta.db_table)} AS t SET {', '.join(sets)}"  # noqa: S608 (the model's names)
            f" FROM unnest({casts}) AS v({names}) WHERE t.{key_name} = v.{key_name}",
            [*one_values, *(_array_of(texts) for _, texts in unnested)],
        )


# Arrays of 1,000 keys go as one array literal each (`%s::text[]` reads it): psycopg adapts
# a list element by element, which cost ~1.5 us per element, 7 arrays per batch item.
def _array_of(items: list[str]) -> str:
    """An array literal of items already in literal form (`_quoted`, or UUID text)."""
    return "{" + ",".join(items) + "}"


def _quoted(text: str) -> str:
    """A text element of an array literal: in double quotes, `\\` and `"` escaped (all
    else, commas, braces and spaces included, stands for itself inside the quotes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _literal_texts(values: list, field) -> list[str]:
    """The values' texts as elements of an array literal ("NULL" for None)."""
    if isinstance(field, DateField):  # DateTimeField too: "2026-11-27T10:00:00.5+00:00"
        # Most are the batch's one time or day: each distinct value formatted once.
        formatted = {v: v.isoformat() for v in set(values) if v is not None}
        text = [None if v is None else formatted[v] for v in values]
    elif isinstance(field, IntegerField | DecimalField):  # ids too
        text = [None if v is None else str(v) for v in values]  # digits, sign, point, exponent
    else:
        raise TypeError(f"no array literal for {type(field).__name__}")
    if None in text:
        text = ["NULL" if t is None else t for t in text]
    return text


def _copy_rows(model, fields: list[str], rows: list[tuple], *, encoded=frozenset()) -> None:
    """COPY of plain tuples into `model`'s table (`fields` by attname; JSON fields as
    `_jsonb` bytes, the `encoded` fields as bytes in their column's binary form, both sent
    as they are); columns not named take their database default (the id of an identity
    column, the audit entry's txid)."""
    if not rows:
        return
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    types = [
        "bytea" if name in encoded else column_type
        for name, column_type in zip(fields, _copy_types(columns), strict=True)
    ]
    names = ", ".join(connection.ops.quote_name(field.column) for field in columns)
    sql = f"COPY {connection.ops.quote_name(meta.db_table)} ({names}) FROM STDIN (FORMAT BINARY)"
    with connection.cursor() as cursor, _binary_copy(cursor, sql) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


_AUDIT_FIELDS = [
    "entity_type", "entity_id", "action", "merchant_id", "actor_id", "actor_role", "ip",
    "user_agent", "changes", "created_at", "credential_id", "digest",
]  # fmt: skip


def _audit_rows(new: list, actor: Actor, now) -> list[tuple]:
    """The entries `ingest_in_transaction` records one by one (`audit_record`), as COPY rows:
    the same PII scrub of the same document and the same digest, with what every entry of
    the batch shares (actor, key, time, the canonical JSON around the entity id and the
    changes) computed once."""
    key = audit_key()
    ip = normalise_ip(actor.ip)
    address = None if ip is None else _inet(ipaddress.ip_address(ip))
    actor_id, role = str(actor.id), actor.role or ""
    user_agent = (actor.user_agent or "")[:USER_AGENT_MAX]
    credential_id = (actor.credential_id or "")[:CREDENTIAL_ID_MAX]
    digesters: dict[tuple[str, str], Callable[[str, str], str]] = {}
    rows = []
    for program, balance, entry, _ in new:
        action, merchant_id = f"transaction.{entry.type}", program.merchant_id or ""
        digest = digesters.get((action, merchant_id))
        if digest is None:
            digest = digesters[(action, merchant_id)] = entry_digester(
                entity_type="transaction",
                action=action,
                merchant_id=merchant_id,
                actor_id=actor_id,
                actor_role=role,
                ip=ip,
                user_agent=user_agent,
                created_at=now,
                credential_id=credential_id,
                key=key,
            )
        entity_id = str(entry.id)
        changes = _entry_changes_json(entry, balance, key=key)
        rows.append(
            ("transaction", entity_id, action, merchant_id, actor_id, role, address,
             user_agent, _JSONB_V1 + changes.encode(), now, credential_id,
             digest(entity_id, changes))
        )  # fmt: skip
    return rows


def _inet(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """An address in inet's binary form, as psycopg's dumper writes it per row (~0.7 us):
    family (PostgreSQL's own numbers), bits, is-cidr, length, the address."""
    family = 2 if address.version == 4 else 3
    return bytes((family, address.max_prefixlen, 0, len(address.packed))) + address.packed


# The scrub's rules (audit/pii.py) change a text only where it finds an email, which needs an
# "@", a NUL, or (in free text) a phone number, 8 digits with at most one separator between
# two: texts that match neither pattern here (supersets of those) are left as they are.
_MAYBE_EMAIL = re.compile(r"[@\x00]")
_MAYBE_PHONE = re.compile(r"\d(?:[\s().-]?\d){7}")
_SCRUBBED_KEYS = PII_KEYS | REMOVED_KEYS
_json_string = json.encoder.encode_basestring  # json.dumps' own, for ensure_ascii=False


def audit_changes_json(after: dict, *, key: bytes) -> str:
    """`canonical_json({"after": pii_scrub(after)})`, the `changes` of an audit entry, for a
    flat document of texts. Most hold nothing the scrub changes (~0.2 us a text to check,
    where `pii_scrub` costs ~2): their canonical JSON is written out directly."""
    for name, value in after.items():
        lowered = name.lower()
        if (
            type(value) is not str
            or lowered in _SCRUBBED_KEYS
            or _MAYBE_EMAIL.search(value)
            or (lowered in FREE_TEXT_KEYS and _MAYBE_PHONE.search(value))
        ):
            return canonical_json({"after": pii_scrub(after, key=key)})
    fields = ",".join(
        f"{_json_string(name)}:{_json_string(value)}" for name, value in sorted(after.items())
    )
    return f'{{"after":{{{fields}}}}}'


def _entry_changes_json(entry: LedgerEntry, balance: MemberBalance, *, key: bytes) -> str:
    """`audit_changes_json(entry_audit_after(entry, balance))`, written out for the four texts
    an ingested entry records, in key order (3.4 -> 1.3 us an entry; tests/audit/
    test_batch_changes.py holds them equal). The points are number texts: never scrubbed,
    nothing to escape. The member id (free text) and the reference are checked as
    audit_changes_json checks them; anything the scrub might change goes through it."""
    member_id, reference = balance.member_id, entry.reference
    if (
        type(member_id) is not str
        or type(reference) is not str
        or _MAYBE_EMAIL.search(member_id)
        or _MAYBE_PHONE.search(member_id)
        or _MAYBE_EMAIL.search(reference)
    ):
        return audit_changes_json(entry_audit_after(entry, balance), key=key)
    return (
        f'{{"after":{{"balance_after":"{entry.balance_after}",'
        f'"member_id":{_json_string(member_id)},"points":"{entry.points}",'
        f'"reference":{_json_string(reference)}}}}}'
    )


# --- item by item ------------------------------------------------------------------------------


def _ingest_each(items: Items, todo: list[int], results: list, actor: Actor) -> None:
    pending = []
    for index in todo:
        program, event = items[index]
        try:
            replay = event_replay(program, event)
        except DomainError as error:
            results[index] = error
            continue
        if replay:
            results[index] = replay
        else:
            pending.append(index)
    # After the stored keys: a repeated key is answered as one by one (a replay, or reused).
    pending = _refunds_of_unknown_members_refused(items, pending, results)
    if pending:
        deadlock_retried(lambda: _ingest_items(items, pending, results, actor))


def _refunds_of_unknown_members_refused(items: Items, todo: list[int], results: list) -> list:
    """Answers `original_not_found` to the refunds of members who have no balance and no
    other item in the batch: their purchase cannot exist. One by one such a refund writes
    nothing; here `_lock_in_order` would create the member's balance only for
    `_ingest_items` to take it back, a statement each. Returns the rest."""
    refunds_only: dict[tuple, list[int]] = {}
    others = set()
    keys = Counter((items[index][0].pk, items[index][1].idempotency_key) for index in todo)
    for index in todo:
        program, event = items[index]
        member = (program.pk, event.member_id)
        if event.type == "refund":
            refunds_only.setdefault(member, []).append(index)
        else:
            others.add(member)
        if keys[(program.pk, event.idempotency_key)] > 1:
            # Another item of the batch may write this key first: this refund is then that
            # key's repeat (a replay, or idempotency_key_reused), as one by one.
            others.add(member)
    for member in others:
        refunds_only.pop(member, None)
    if not refunds_only:
        return todo
    known = set(
        MemberBalance.objects.filter(
            program_id__in={program_id for program_id, _ in refunds_only},
            member_id__in={member_id for _, member_id in refunds_only},
        ).values_list("program_id", "member_id")
    )
    refused = set()
    for member, indexes in refunds_only.items():
        if member not in known:
            for index in indexes:
                program, event = items[index]
                # One by one, a key a pending approval request holds is refused first.
                holder = key_holder(program.pk, event.idempotency_key)
                results[index] = (
                    key_held(holder, event.idempotency_key)
                    if holder is not None
                    else OriginalNotFound(original_reference=event.original_reference)
                )
                refused.add(index)
    return [index for index in todo if index not in refused]


@transaction.atomic(durable=True)
def _ingest_items(items: Items, todo: list[int], results: list, actor: Actor) -> None:
    created = _lock_in_order([items[i] for i in todo])
    for index in todo:
        program, event = items[index]
        try:
            with transaction.atomic():
                results[index] = ingest_in_transaction(program=program, event=event, actor=actor)
        except DomainError as error:
            results[index] = error
        except IntegrityError:
            # The same key inside this batch, or committed meanwhile by another request: its
            # replay, or (another event under it) this item's refusal alone.
            try:
                replay = event_replay(program, event)
            except DomainError as error:
                results[index] = error
                continue
            if replay is None:
                raise
            results[index] = replay
    if created:  # new members: take back the balances of those who got no entry
        written = set()
        for index in todo:
            result = results[index]
            if isinstance(result, IngestResult) and not result.replayed:
                written.add(result.entry.balance_id)
        _balances_unused_delete(created, written)


def _lock_in_order(items: Items) -> dict[int, tuple]:
    """Creates the members' missing balances (returns them, {id: member}, for
    `_balances_unused_delete`), then locks every balance and budget shard of the batch."""
    members = sorted({(str(program.pk), event.member_id) for program, event in items})
    programs = {str(program.pk): program for program, _ in items}
    if connection.vendor == "postgresql":
        # As the set-based path creates them, in the same (program, member) order.
        by_key = {program.id.int: program for program in programs.values()}
        wanted = {(program.id.int, event.member_id) for program, event in items}
        created = _balances_insert(by_key, wanted, _tiers(by_key))
    else:
        created = _balances_create_one_writer(programs, members)
    for program_id in sorted(programs):
        member_ids = sorted(m for p, m in members if p == program_id)
        list(
            MemberBalance.objects.select_for_update()
            .filter(program_id=program_id, member_id__in=member_ids)
            .order_by("pk")  # the order of every multi-row balance lock (jobs, campaigns)
            .values_list("pk", flat=True)
        )
    for program_id in sorted(programs):
        list(
            BudgetShard.objects.select_for_update()
            .filter(program_id=program_id)
            .order_by("shard")
            .values_list("pk", flat=True)
        )
    return created


def _balances_create_one_writer(programs: dict, members: list) -> dict[int, tuple]:
    """`_lock_in_order`'s balance creation on SQLite (one writer at a time): the members
    without a balance, created; returns them, {id: member}."""
    existing = set(
        MemberBalance.objects.filter(
            program_id__in=[program.pk for program in programs.values()],
            member_id__in={member_id for _, member_id in members},
        ).values_list("program_id", "member_id")
    )
    missing = [(p, m) for p, m in members if (programs[p].pk, m) not in existing]
    if not missing:
        return {}
    entry_tiers = {p: entry_tier(programs[p]) for p in {p for p, _ in missing}}
    MemberBalance.objects.bulk_create(
        [MemberBalance(program=programs[p], member_id=m, tier=entry_tiers[p]) for p, m in missing]
    )
    wanted = {(programs[p].pk, m): (programs[p].id.int, m) for p, m in missing}
    return {
        pk: wanted[(program_id, member_id)]
        for pk, program_id, member_id in MemberBalance.objects.filter(
            program_id__in={key[0] for key in wanted},
            member_id__in={key[1] for key in wanted},
        ).values_list("pk", "program_id", "member_id")
        if (program_id, member_id) in wanted
    }
