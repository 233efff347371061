"""Exactly-once ingestion of merchant events: purchase, refund, referral, campaign_bonus,
manual_adjust.

One event is one transaction: lock the member's balance row, compute, charge the budget
(sharded), write one immutable ledger entry, settle the point lots, update the balance cache,
append the outbox event and the audit entry. The idempotency key is unique per program in the
database, so concurrent repeats write one entry and every repeat answers the first result.

Modules: `inputs` (event types, the validated input and its answer), `service` (the entry
points and replays), `earning` (the earning rules), `refunds`, `adjustments`, `entries` (the
ledger entry and what derives from it), `statement` (PostgreSQL's one-statement earning).
"""

from .earning import EARN_FIELDS, Earning, earn_apply
from .entries import balance_snapshot, entry_audit_after, entry_build, entry_values
from .inputs import EARN_TYPES, EVENT_TYPES, POINTS_TYPES, EventInput, IngestResult, event_validate
from .service import (
    deadlock_retried,
    event_ingest,
    event_ingest_prefaced,
    event_replay,
    ingest_in_transaction,
    ingest_prefaceable,
    is_deadlock,
    replay_answer,
    stored_entry_id,
)
from .statement import earn_lot_values, earn_outbox_values

__all__ = [
    "EARN_FIELDS",
    "EARN_TYPES",
    "EVENT_TYPES",
    "POINTS_TYPES",
    "Earning",
    "EventInput",
    "IngestResult",
    "balance_snapshot",
    "deadlock_retried",
    "earn_apply",
    "earn_lot_values",
    "earn_outbox_values",
    "entry_audit_after",
    "entry_build",
    "entry_values",
    "event_ingest",
    "event_ingest_prefaced",
    "event_replay",
    "event_validate",
    "ingest_in_transaction",
    "ingest_prefaceable",
    "is_deadlock",
    "replay_answer",
    "stored_entry_id",
]
