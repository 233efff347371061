"""Appending to the audit trail. Call inside the transaction of the write it records."""

from typing import Any

from loyalty.actors import Actor

from .models import AuditEntry


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
    """Appends one entry; the caller's transaction makes it atomic with the change."""
    changes = {}
    if before is not None:
        changes["before"] = before
    if after is not None:
        changes["after"] = after
    return AuditEntry.objects.create(
        entity_type=entity_type,
        entity_id=str(entity_id),
        action=action,
        merchant_id=merchant_id or "",
        actor_id=actor.id,
        actor_role=actor.role,
        ip=actor.ip,
        user_agent=(actor.user_agent or "")[:400],
        changes=changes,
    )
