"""Reads of the audit trail, scoped: merchant-bound callers see only their merchant's entries
(entries with no merchant, such as staff logins, are platform-only)."""

from datetime import datetime

from django.db.models import QuerySet

from access.caller import Caller
from access.scoping import scope_queryset

from .models import AuditEntry

ENTITY_TYPES = (
    "program", "balance", "transaction", "redemption", "voucher", "campaign", "approval",
    "webhook_endpoint", "user", "approval_policy", "job", "tier_snapshot", "api_key",
    "staff_identity", "merchant", "group", "periodic_task", "crontab_schedule",
    "interval_schedule", "solar_schedule", "clocked_schedule",
)  # fmt: skip


def audit_entries_for_caller(
    *,
    caller: Caller,
    entity_type: str | None = None,
    entity_id: str | None = None,
    actor_id: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[AuditEntry]:
    queryset = scope_queryset(AuditEntry.objects.all(), caller)
    if entity_type:
        queryset = queryset.filter(entity_type=entity_type)
    if entity_id is not None:
        queryset = queryset.filter(entity_id=entity_id)
    if actor_id:
        queryset = queryset.filter(actor_id=actor_id)
    if action:
        queryset = queryset.filter(action=action)
    if since:
        queryset = queryset.filter(created_at__gte=since)
    if until:
        queryset = queryset.filter(created_at__lt=until)
    return queryset
