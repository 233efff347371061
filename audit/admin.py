"""Read-only audit views for auditors (group `auditor`, permission `audit.view_auditentry`).

Nobody adds, changes or deletes audit rows here, superusers included; the database triggers
refuse it anyway.
"""

import json

from django.contrib import admin
from django.utils.html import format_html

from . import admin_beat, admin_users  # noqa: F401  (schedules, staff users, roles: audited)
from .models import AuditEntry, AuditSeal


class ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnly):
    list_display = [
        "id", "created_at", "action", "entity_type", "entity_id", "merchant_id", "actor_id",
        "actor_role", "ip",
    ]  # fmt: skip
    list_filter = ["entity_type", "actor_role", "action", "created_at"]
    search_fields = ["=entity_id", "=actor_id", "=merchant_id", "action"]
    show_full_result_count = False  # a COUNT(*) over the whole trail on every page is costly
    list_per_page = 50
    ordering = ["-id"]
    fields = [
        "id", "created_at", "action", "entity_type", "entity_id", "merchant_id", "actor_id",
        "actor_role", "ip", "user_agent", "credential_id", "changes_pretty", "digest", "txid",
    ]  # fmt: skip
    readonly_fields = fields

    @admin.display(description="changes (PII masked)")
    def changes_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.changes, indent=2, sort_keys=True))


@admin.register(AuditSeal)
class AuditSealAdmin(ReadOnly):
    list_display = ["seq", "basis", "lo", "hi", "entry_count", "first_entry_id", "last_entry_id",
                    "created_at"]  # fmt: skip
    ordering = ["-seq"]
