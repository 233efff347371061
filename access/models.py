"""API credentials and HTTP idempotency records."""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from rest_framework_api_key.models import AbstractAPIKey

from .permissions import API_KEY_PERMISSIONS


class MerchantAPIKey(AbstractAPIKey):
    """A merchant integration's key: stored hashed (shown once), revocable, bound to one
    merchant and a set of named permissions."""

    merchant = models.ForeignKey(
        "loyalty.Merchant", on_delete=models.PROTECT, related_name="api_keys"
    )
    permissions = models.JSONField(
        default=list, blank=True, help_text="Named permissions, e.g. events:write."
    )
    created_by = models.CharField(max_length=128, blank=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "merchant API key"
        verbose_name_plural = "merchant API keys"

    def clean(self) -> None:
        super().clean()
        if not isinstance(self.permissions, list) or not all(
            isinstance(p, str) for p in self.permissions
        ):
            raise ValidationError({"permissions": "A list of permission names."})
        unknown = sorted(set(self.permissions) - API_KEY_PERMISSIONS)
        if unknown:
            raise ValidationError({"permissions": f"Not grantable to an API key: {unknown}."})


class IdempotencyRecord(models.Model):
    """The outcome of one write request, replayed for a repeat of its `Idempotency-Key`.

    Unique per (scope, key): the scope is the caller's merchant (or, for platform staff, the
    person), so two merchants never collide and a merchant's retries from any of its keys do.
    """

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress"
        COMPLETED = "completed"

    scope = models.CharField(max_length=150)
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    request_hash = models.CharField(max_length=64)
    credential_id = models.CharField(max_length=128, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    response_content_type = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField()
    # A request that dies mid-way leaves its claim; past this time a repeat may take it over.
    locked_until = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotency_unique_scope_key"),
            models.CheckConstraint(
                condition=Q(status__in=["in_progress", "completed"]),
                name="idempotency_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["expires_at"], name="idempotency_expiry")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} ({self.status})"
