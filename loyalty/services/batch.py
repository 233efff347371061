"""Batch ingestion: up to 1,000 events in one database transaction, each item atomic on its
own (a savepoint), so one commit (one WAL flush) serves the whole batch.

Deadlock freedom: before any item runs, the batch locks every member balance it will touch,
program by program (sorted by program id) and within a program in balance id order, the
order the workers' chunks use too; then every budget shard of its programs, sorted by
(program, shard). Every other writer takes a balance before shards, and whoever holds shards already
holds all the balances it needs, so no wait cycle can form.
"""

from django.db import IntegrityError, transaction

from ..actors import Actor
from ..errors import DomainError
from ..models import BudgetShard, MemberBalance, Program
from .balances import entry_tier
from .ingestion import (
    EventInput,
    IngestResult,
    event_replay,
    event_validate,
    ingest_in_transaction,
)

MAX_BATCH = 1000


def events_ingest_batch(
    *, items: list[tuple[Program, EventInput]], actor: Actor
) -> list[IngestResult | DomainError]:
    """Ingests each item exactly once; returns, in order, its result or its domain error."""
    if len(items) > MAX_BATCH:
        raise ValueError(f"a batch holds at most {MAX_BATCH} events")
    results: list[IngestResult | DomainError | None] = [None] * len(items)
    todo = []
    for index, (program, event) in enumerate(items):
        try:
            event_validate(program, event)
            replay = event_replay(program, event)
        except DomainError as error:
            results[index] = error
            continue
        if replay:
            results[index] = replay
        else:
            todo.append(index)
    if todo:
        _ingest_items(items, todo, results, actor)
    return results  # type: ignore[return-value]


@transaction.atomic(durable=True)
def _ingest_items(items, todo: list[int], results: list, actor: Actor) -> None:
    _lock_in_order([items[i] for i in todo])
    for index in todo:
        program, event = items[index]
        try:
            with transaction.atomic():
                results[index] = ingest_in_transaction(program=program, event=event, actor=actor)
        except DomainError as error:
            results[index] = error
        except IntegrityError:
            # The same key inside this batch, or committed meanwhile by another request.
            replay = event_replay(program, event)
            if replay is None:
                raise
            results[index] = replay


def _lock_in_order(items: list[tuple[Program, EventInput]]) -> None:
    members = sorted({(str(program.pk), event.member_id) for program, event in items})
    programs = {str(program.pk): program for program, _ in items}
    entry_tiers = {p: entry_tier(program) for p, program in programs.items()}
    MemberBalance.objects.bulk_create(
        [MemberBalance(program=programs[p], member_id=m, tier=entry_tiers[p]) for p, m in members],
        ignore_conflicts=True,
    )
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
