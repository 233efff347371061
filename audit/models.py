"""The append-only audit trail."""

from django.db import models


class AuditEntry(models.Model):
    """One write in the system: who did what to which entity, before and after (PII masked)."""

    entity_type = models.CharField(max_length=32)
    entity_id = models.CharField(max_length=64)
    action = models.CharField(max_length=64)
    merchant_id = models.CharField(max_length=64, blank=True)
    actor_id = models.CharField(max_length=128)
    actor_role = models.CharField(max_length=32)
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["entity_type", "entity_id", "id"]),
            models.Index(fields=["actor_id", "id"]),
            models.Index(fields=["action", "id"]),
            models.Index(fields=["created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.entity_type}:{self.entity_id} by {self.actor_id}"
