"""The entry points: `event_ingest` (its own transaction) and `ingest_in_transaction` (the
caller's), and the answer to a repeated idempotency key."""

from collections.abc import Callable
from typing import TypeVar

import psycopg
from django.db import IntegrityError, OperationalError, connection, transaction
from psycopg.pq import TransactionStatus

from audit.services import audit_record

from ...actors import Actor
from ...errors import DomainError, IdempotencyKeyReused
from ...models import LedgerEntry, Program
from ..balances import balance_lock
from ..budget import BudgetRetry
from .adjustments import _adjust
from .earning import _earn
from .entries import entry_audit_after
from .inputs import EARN_TYPES, EventInput, IngestResult, event_validate
from .key_holds import key_held, key_holder
from .pipeline import keep_open, queued_pipeline
from .refunds import _refund
from .statement import (
    _earn_in_one_statement,
    _event_lock,
    budget_retry_on_refusal,
    entry_id_stored,
)

T = TypeVar("T")


def is_deadlock(exc: Exception) -> bool:
    """PostgreSQL chose this transaction to end a deadlock (rolled back whole)."""
    error = exc if isinstance(exc, psycopg.Error) else exc.__cause__
    return isinstance(error, psycopg.errors.DeadlockDetected)


def deadlock_retried(fn: Callable[[], T]) -> T:
    """`fn()`, run once more if PostgreSQL ended a deadlock by rolling it back: every write
    here is keyed, so the second run applies what the first did not, or answers it as a
    replay. (A wait cycle can form through a key: an event holds its uncommitted key while it
    waits for budget shards that a batch holds while it waits for that key.)"""
    try:
        return fn()
    except OperationalError as exc:
        if not is_deadlock(exc):
            raise
        return fn()


def event_ingest(
    *,
    program: Program,
    event: EventInput,
    actor: Actor,
    in_transaction: Callable[[IngestResult], None] | None = None,
) -> IngestResult:
    """Applies one event exactly once per (program, idempotency key); see `_event_ingest`."""
    return deadlock_retried(
        lambda: _event_ingest(
            program=program, event=event, actor=actor, in_transaction=in_transaction
        )
    )


def _event_ingest(
    *,
    program: Program,
    event: EventInput,
    actor: Actor,
    in_transaction: Callable[[IngestResult], None] | None = None,
) -> IngestResult:
    """Applies one event exactly once per (program, idempotency key).

    `in_transaction(result)` runs inside the transaction that writes the event, after its
    rows and before COMMIT, so what it writes commits or rolls back with the event (the API
    stores its idempotent answer there). It does not run for a replay, which writes nothing.
    On PostgreSQL an earning's statements may travel in a pipeline (`_earn_pipelined`): the
    hook's statements are then sent, not yet answered, when it returns, so it must not read
    their results (`rowcount`) nor expect to catch their errors; any error, the event's or
    the hook's, fails the whole transaction. That transaction is PostgreSQL's implicit one
    (no BEGIN is sent), in which savepoints, cursors and SET LOCAL do not work: the hook must
    not open `transaction.atomic()` (nor call `get_or_create`, `QuerySet.iterator()`).
    """
    event_validate(program, event)
    # No replay lookup before the transaction: the one after the balance lock answers a
    # repeat just as well, and a lookup here would cost every new event a statement.
    try:
        if event.type in EARN_TYPES and _pipelinable():
            try:
                return _earn_pipelined(program, event, actor, in_transaction)
            except BudgetRetry:
                # No free budget shard could pay: rare (near the limit, or every shard busy).
                # The first try may hold a shard lock out of order, so it was rolled back
                # whole; this one takes the savepoint-guarded path, and the slow path if need be.
                pass
        return _ingest_atomic(
            program=program, event=event, actor=actor, in_transaction=in_transaction
        )
    except IntegrityError:
        # A concurrent request with the same key committed first: answer its result.
        replay = event_replay(program, event)
        if replay:
            return replay
        raise


def event_ingest_prefaced(
    *,
    preface,
    event: EventInput,
    actor: Actor,
    in_transaction: Callable[[IngestResult], None] | None = None,
) -> IngestResult:
    """`event_ingest` for an earning on PostgreSQL (`ingest_prefaceable`) whose program comes
    from `preface`, a statement that travels with the balance lock in its round trip (the
    API's idempotency guard: `access.idempotency.KeyGuard`, which also names the program and
    checks the caller's scope). Everything the preface or the event refuses ends the
    transaction with nothing written. BudgetRetry and IntegrityError (a repeat committed
    meanwhile) reach the caller, whose other path decides them."""
    return _earn_pipelined(None, event, actor, in_transaction, preface=preface)


def ingest_prefaceable(event: EventInput) -> bool:
    return event.type in EARN_TYPES and _pipelinable()


def event_replay(program: Program, event: EventInput) -> IngestResult | None:
    # Every new event asks this and almost always hears "no": a plain SQL probe of the unique
    # index costs a fraction of the ORM query; the entry is loaded only for a repeat.
    found = stored_entry_id(program, event.idempotency_key)
    if found is None:
        return None
    return replay_answer(LedgerEntry.objects.get(pk=found), event)


def stored_entry_id(program: Program, idempotency_key: str) -> int | None:
    """The id of the entry the key wrote in the program, if any (entries are never deleted:
    once stored, a key stays stored)."""
    return entry_id_stored(program.pk, idempotency_key)


def replay_answer(entry: LedgerEntry, event: EventInput) -> IngestResult:
    """The stored answer to a repeat of `event` whose key already wrote `entry`."""
    if not event.is_repeat_of(entry.details.get("fingerprint")):
        raise IdempotencyKeyReused(
            "This idempotency key was already used for a different event.",
            idempotency_key=event.idempotency_key,
        )
    return IngestResult(entry=entry, replayed=True)


@transaction.atomic(durable=True)
def _ingest_atomic(
    *,
    program: Program,
    event: EventInput,
    actor: Actor,
    in_transaction: Callable[[IngestResult], None] | None,
) -> IngestResult:
    result = ingest_in_transaction(program=program, event=event, actor=actor)
    if in_transaction is not None and not result.replayed:
        in_transaction(result)
    return result


def _pipelinable() -> bool:
    """Whether an earning may take `_earn_pipelined`: on PostgreSQL, with the connection at the
    server's default isolation and access mode. The pipeline's implicit transaction runs at
    those; a connection set otherwise (DATABASES OPTIONS) takes `_ingest_atomic`, whose BEGIN
    names its level."""
    if connection.vendor != "postgresql":
        return False
    connection.ensure_connection()
    pg = connection.connection
    return pg.isolation_level is None and pg.read_only is None


@transaction.atomic(durable=True)
def _earn_pipelined(
    program: Program | None,
    event: EventInput,
    actor: Actor,
    in_transaction: Callable[[IngestResult], None] | None,
    preface=None,
) -> IngestResult:
    """An earning on PostgreSQL in two round trips: in a pipeline (`queued_pipeline`), the
    balance lock goes first, then the write statement and what `in_transaction` writes go
    together with the pipeline's sync (a member's first event adds one, its balance's INSERT
    and a second lock). Each round trip saved is a wait and a wake-up of both processes.

    There is no BEGIN nor COMMIT: in PostgreSQL's extended protocol the statements up to a
    sync make one implicit transaction, which the sync commits, or rolls back when one of
    them failed (its error arrives when the pipeline ends). Whatever fails in Python instead
    (a refusal after the lock, an error of `in_transaction`), or a hook asking for the
    rollback, must not reach that commit: `keep_open` then sends BEGIN, which turns the
    implicit transaction into an explicit one the sync leaves open, and it is rolled back.
    Against an explicit BEGIN and COMMIT: 1.5-4.9 % less CPU per event (docs/BENCHMARKS.md).

    The atomic block stays the transaction's owner for Django, but on every path the
    database transaction has ended before the block does, whose own COMMIT or ROLLBACK then
    has nothing left to do."""
    pg = connection.connection
    # The block is the transaction unless a caller's transaction holds it (only a test's: the
    # block is durable); the block is then a savepoint, which Django ends.
    own = pg.pgconn.transaction_status == TransactionStatus.IDLE
    if own:
        # In autocommit psycopg sends no BEGIN of its own: the implicit transaction above.
        pg.autocommit = True
    try:
        with (
            budget_retry_on_refusal(),
            connection.wrap_database_errors,  # for errors that arrive at the pipeline's end
            connection.cursor() as cursor,
            # A block that raises (a refusal after the lock, the hook's error) sends BEGIN
            # instead of committing at the sync; the transaction is rolled back below. A hook
            # that caught the event's failed statement gets PipelineAborted at the sync.
            queued_pipeline(pg, implicit_transaction=own),
        ):
            balance, replay_id, entry_id = _event_lock(cursor, program, event, preface)
            program = balance.program  # the preface's, with one
            if replay_id is not None:
                # A repeat. A new member's balance is the only row this transaction may have
                # written: kept. The stored entry is read in the same transaction.
                return replay_answer(LedgerEntry.objects.get(pk=replay_id), event)
            entry = _earn_in_one_statement(
                cursor, program, balance, event, actor, entry_id, retryable=True
            )
            result = IngestResult(entry=entry)
            if in_transaction is not None:
                in_transaction(result)
            # A hook may have asked for the rollback (transaction.set_rollback): as at the end
            # of an atomic block, then nothing commits.
            if own and connection.needs_rollback:
                keep_open(pg)
            return result
    finally:
        # A lost connection has nothing to roll back: its own error goes on, and the atomic
        # block closes it.
        if own and not pg.closed:
            if pg.pgconn.transaction_status != TransactionStatus.IDLE:
                with connection.wrap_database_errors:
                    pg.rollback()  # the transaction `keep_open` kept from the sync
            pg.autocommit = False


def ingest_in_transaction(*, program: Program, event: EventInput, actor: Actor) -> IngestResult:
    """The body of one ingestion; the caller owns the transaction (a batch item's savepoint,
    `_ingest_atomic`). The budget is charged by `budget_charge`, in savepoints."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # one cursor for the event's two statements
            balance, replay_id, entry_id = _event_lock(cursor, program, event)
            if replay_id is None and event.type in EARN_TYPES:
                try:
                    entry = _earn_in_one_statement(
                        cursor, program, balance, event, actor, entry_id, retryable=False
                    )
                except DomainError:
                    # A refusal (the budget spent, most often) of an event whose key a
                    # concurrent request wrote after the lock's probe: the entry answers.
                    replay = event_replay(program, event)
                    if replay:
                        return replay
                    raise
                return IngestResult(entry=entry)
        if replay_id is not None:
            return replay_answer(LedgerEntry.objects.get(pk=replay_id), event)
    else:
        balance = balance_lock(program=program, member_id=event.member_id, create=True)
    # A repeat committed by a request we waited for on the lock: the lock statement's probe
    # reads the snapshot taken before that wait, so it cannot see one. An earning would then
    # hit the unique key on insert and be answered as a replay; a refund or an adjustment
    # reads the repeat's effects first and would refuse it (refund_exceeds_original...).
    replay = event_replay(program, event)
    if replay:
        return replay
    if connection.vendor != "postgresql":  # (PostgreSQL's lock statement asked)
        holder = key_holder(program.pk, event.idempotency_key)
        if holder is not None:
            raise key_held(holder, event.idempotency_key)
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
