"""Appending to the audit trail, and sealing it.

`audit_record` is called by every write service inside its own transaction, so the entry
commits or rolls back with the change it records. It takes no lock and reads no shared row:
the entry's digest needs only the entry itself (see `audit.integrity`), and sealing happens
later, in the `audit_seal` job, over transactions that have finished.
"""

import logging
from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from loyalty.actors import Actor

from .integrity import GENESIS, audit_key, entry_digester, normalise_ip, scrubbed_json, seal_digest
from .models import AuditEntry, AuditSeal
from .pii import pii_scrub

logger = logging.getLogger(__name__)

USER_AGENT_MAX = 400
CREDENTIAL_ID_MAX = 128
# A seal covers at most about this many entries, so one run stays short; the job catches up
# over several runs.
SEAL_MAX_ENTRIES = 50_000


def audit_record(
    *,
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: Any,
    merchant_id: str | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> AuditEntry:
    """Appends one entry, PII scrubbed, with its keyed digest; the caller's transaction makes
    it atomic with the change."""
    entry = AuditEntry(
        **audit_entry_values(
            actor=actor,
            action=action,
            entity_type=entity_type,
            entity_id=entity_id,
            merchant_id=merchant_id,
            before=before,
            after=after,
        )
    )
    entry.save(force_insert=True)
    return entry


def audit_entries_build(
    *,
    actor: Actor,
    action: str,
    entity_type: str,
    merchant_id: str | None = None,
    rows: Iterable[tuple[Any, dict | None, dict | None]],
) -> list[AuditEntry]:
    """`audit_record`'s unsaved entries for many entities changed by one bulk write (a job's
    chunk), digests included, for a caller that inserts them itself with a bulk path (COPY) in
    its own transaction: one entry per (entity_id, before, after)."""
    key, now = audit_key(), timezone.now()
    return [
        AuditEntry(
            **_entry_values(
                actor=actor,
                action=action,
                entity_type=entity_type,
                entity_id=entity_id,
                merchant_id=merchant_id,
                before=before,
                after=after,
                key=key,
                now=now,
            )
        )
        for entity_id, before, after in rows
    ]


def audit_entry_values(
    *,
    actor: Actor,
    action: str,
    entity_type: str,
    entity_id: Any,
    merchant_id: str | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> dict:
    """`audit_record`'s entry as field values by attname, digest included, for a caller that
    writes the row in its own statement (`event_ingest`'s one write): no model instance."""
    return _entry_values(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        merchant_id=merchant_id,
        before=before,
        after=after,
        key=audit_key(),
        now=timezone.now(),
    )


# The fields `entry_digester` leaves to each entry; it takes every other field of an entry.
_PER_ENTITY = ("entity_id", "changes")


def _entry_values(*, actor, action, entity_type, entity_id, merchant_id, before, after, key, now):
    changes = {}
    if before is not None:
        changes["before"] = pii_scrub(before, key=key)
    if after is not None:
        changes["after"] = pii_scrub(after, key=key)
    fields = {
        "entity_type": entity_type,
        "entity_id": str(entity_id),
        "action": action,
        "merchant_id": merchant_id or "",
        "actor_id": str(actor.id),
        "actor_role": actor.role or "",
        "ip": normalise_ip(actor.ip),
        "user_agent": (actor.user_agent or "")[:USER_AGENT_MAX],
        "changes": changes,
        "created_at": now,
        "credential_id": (actor.credential_id or "")[:CREDENTIAL_ID_MAX],
    }
    # entry_digest(**fields), with the scrubbed changes written out by `scrubbed_json`.
    shared = {name: value for name, value in fields.items() if name not in _PER_ENTITY}
    digest = entry_digester(**shared, key=key)
    fields["digest"] = digest(fields["entity_id"], scrubbed_json(changes))
    return fields


def seal_basis() -> str:
    return AuditSeal.Basis.TXID if connection.vendor == "postgresql" else AuditSeal.Basis.ID


def seal_entries(*, basis: str, lo: int, hi: int):
    """The entries a seal over [lo, hi) covers, in id order."""
    key = "txid" if basis == AuditSeal.Basis.TXID else "id"
    return AuditEntry.objects.filter(**{f"{key}__gte": lo, f"{key}__lt": hi}).order_by("id")


def audit_seal(*, max_entries: int = SEAL_MAX_ENTRIES) -> AuditSeal | None:
    """Seals the entries of every transaction finished since the last seal; None when there
    is nothing new or a concurrent run sealed first."""
    try:
        seal = _seal_atomic(max_entries=max_entries)
    except IntegrityError:
        return None  # another run inserted the same `lo` (or `seq`) first
    if seal is not None:
        # Committed. The log leaves the database: a record of the chain's head that a DB
        # owner deleting the newest seals (and sealing the gap again) cannot rewrite; it is
        # what `audit_verify --anchor SEQ:DIGEST` checks against.
        logger.info(
            "audit.seal seq=%d digest=%s entries=%d", seal.seq, seal.digest, seal.entry_count
        )
    return seal


@transaction.atomic(durable=True)
def _seal_atomic(*, max_entries: int) -> AuditSeal | None:
    last = AuditSeal.objects.order_by("-seq").first()
    basis = seal_basis()
    lo = last.hi if last else 0
    hi = _seal_horizon(basis)
    if hi <= lo:
        return None
    key = "txid" if basis == AuditSeal.Basis.TXID else "id"
    # Cap the size: stop at the key of the (max_entries+1)-th entry, never splitting the
    # entries of one transaction across two seals.
    cut = (
        AuditEntry.objects.filter(**{f"{key}__gte": lo, f"{key}__lt": hi})
        .order_by(key)
        .values_list(key, flat=True)[max_entries : max_entries + 1]
    )
    cut = list(cut)
    if cut:
        hi = max(cut[0], lo + 1)
    entries = list(seal_entries(basis=basis, lo=lo, hi=hi).values_list("id", "digest"))
    if not entries:
        return None
    prev = last.digest if last else GENESIS
    digest, count = seal_digest(prev_digest=prev, basis=basis, lo=lo, hi=hi, entries=entries)
    return AuditSeal.objects.create(
        seq=(last.seq + 1) if last else 1,
        basis=basis,
        lo=lo,
        hi=hi,
        entry_count=count,
        first_entry_id=entries[0][0],
        last_entry_id=entries[-1][0],
        prev_digest=prev,
        digest=digest,
        created_at=timezone.now(),
    )


def _seal_horizon(basis: str) -> int:
    """Exclusive upper bound of what may be sealed now: every transaction below it that can
    write to this database is over, so no entry can land in the range once it is sealed.

    SQLite has one writer at a time, so every committed id is final. On PostgreSQL,
    transaction ids are cluster-wide: the snapshot's xmin (the oldest transaction running
    anywhere) is always safe, but any long transaction in another database would hold
    sealing back. When we may read every session's transaction id (superuser or
    pg_read_all_stats), the horizon is the oldest transaction running in *this* database.
    Order matters: the snapshot is taken first, so a transaction that gets its id after it
    has an id >= xmax, beyond the horizon, even if the activity view below misses it.
    """
    with connection.cursor() as cursor:
        if basis == AuditSeal.Basis.ID:
            cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {AuditEntry._meta.db_table}")  # noqa: S608
            return int(cursor.fetchone()[0])
        cursor.execute(
            "SELECT pg_current_snapshot()::text, pg_has_role('pg_read_all_stats', 'USAGE')"
        )
        snapshot, can_see_all = cursor.fetchone()
        xmin, xmax, xip = snapshot.split(":")
        if not can_see_all:
            return int(xmin)
        cursor.execute(
            "SELECT backend_xid::text::bigint FROM pg_stat_activity"
            " WHERE datname = current_database() AND backend_xid IS NOT NULL"
        )
        ours = {row[0] for row in cursor.fetchall()}
        # The activity view shows 32-bit xids; the snapshot lists full 64-bit ones.
        running_here = [int(x) for x in xip.split(",") if x and int(x) % 2**32 in ours]
        return min(running_here, default=int(xmax))
