"""The ledger entry of an event and what is derived from it: the balance snapshot, the
outbox payload and the audit document."""

from decimal import Decimal

from django.utils import timezone

from ...actors import Actor
from ...models import LedgerEntry, MemberBalance, Program
from .inputs import EventInput


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
    values = entry_values(
        program,
        balance,
        event,
        actor,
        points=points,
        details=details,
        fingerprint=event.fingerprint(),
        original_id=None if original is None else original.pk,
        occurred_at=event.occurred_at or timezone.now(),
        created_at=None,  # auto_now_add: stamped on insert
    )
    # Positional: a third of the CPU of keyword arguments (every event builds one).
    entry = LedgerEntry(*[values[attname] for attname in _ENTRY_ATTNAMES])
    _PROGRAM.set_cached_value(entry, program)
    _BALANCE.set_cached_value(entry, balance)
    if original is not None:
        _ORIGINAL.set_cached_value(entry, original)
    return entry


_ENTRY_ATTNAMES = [f.attname for f in LedgerEntry._meta.concrete_fields]
_PROGRAM, _BALANCE, _ORIGINAL = (
    LedgerEntry._meta.get_field(name) for name in ("program", "balance", "original_entry")
)


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


def entry_values(
    program: Program,
    balance: MemberBalance,
    event: EventInput,
    actor: Actor,
    *,
    points: Decimal,
    details: dict,
    fingerprint: str,
    original_id: int | None,
    occurred_at,
    created_at,
) -> dict:
    """A ledger entry's field values by attname, the one definition the single path
    (`entry_build`) and the batch (which builds its entries without `Model.__init__`) share."""
    return {
        "id": None,
        "program_id": program.id,
        "balance_id": balance.id,
        "type": event.type,
        "points": points,
        "amount": event.amount,
        "currency": event.currency or "",
        "module": event.module,
        "reference": event.reference,
        "original_entry_id": original_id,
        "redemption_id": None,
        "idempotency_key": event.idempotency_key,
        "balance_after": balance.points_balance,
        "reason": event.reason,
        "details": {
            **details,
            "member_id": balance.member_id,
            "fingerprint": fingerprint,
            "balance": balance_snapshot(balance),
        },
        "metadata": event.metadata,
        "actor_id": actor.id,
        "actor_role": actor.role,
        "occurred_at": occurred_at,
        "created_at": created_at,
    }


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


def entry_audit_after(entry: LedgerEntry, balance: MemberBalance) -> dict:
    """What the audit entry of an ingested event records (PII scrubbed by the audit trail)."""
    return {
        "member_id": balance.member_id,
        "points": str(entry.points),
        "balance_after": str(entry.balance_after),
        "reference": entry.reference,
    }
