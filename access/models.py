"""API credentials, HTTP idempotency records, and staff users' Molam ID identities."""

from django.conf import settings
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
    # The answer's bytes as first sent, replayed as they are: nobody reads inside them, so
    # they are not parsed into jsonb on every write (a batch's answer is ~700 kB of JSON).
    response_bytes = models.BinaryField(null=True, blank=True)
    # The answer as JSON, as records completed before access/0006 hold it (and processes of
    # that release write it while a deploy rolls out); replayed through DRF's renderer. A
    # later release drops it once every such record has expired.
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


# Actor ids the engine gives to others: staff users without a link (`user:<pk>`), background
# jobs (`system`, `system:<job>`), failed logins (`anonymous`), API keys (`apikey:<prefix>`).
# A subject among them would let one person pass for another in the approvals' "distinct
# people" checks. (The same rule is checked in `clean` for a readable form error.)
RESERVED_SUBJECTS = ~(
    Q(molam_subject__startswith="user:")
    | Q(molam_subject="system")
    | Q(molam_subject__startswith="system:")
    | Q(molam_subject="anonymous")
    | Q(molam_subject__startswith="apikey:")
)


def subject_reserved(subject: str) -> bool:
    """True for an id RESERVED_SUBJECTS refuses."""
    return subject.startswith(("user:", "system:", "apikey:")) or subject in {"system", "anonymous"}


class StaffIdentity(models.Model):
    """A staff user's Molam ID subject (the JWT `sub` they call the API with).

    A linked staff user acts in the admin under that subject, so a person has one actor id on
    both channels and the approvals' maker and one-person-one-role rules hold across them
    (access.selectors.staff_actor). A link is permanent: never edited nor deleted, so the ids a
    person has acted under never change (the user cannot be deleted either; deactivate it).
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_identity"
    )
    molam_subject = models.CharField(
        max_length=128,
        unique=True,
        help_text="The person's Molam ID subject: the `sub` of their API tokens, exactly.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "staff identity"
        verbose_name_plural = "staff identities"
        constraints = [
            models.CheckConstraint(
                condition=~Q(molam_subject=""), name="staff_identity_subject_not_empty"
            ),
            models.CheckConstraint(
                condition=RESERVED_SUBJECTS, name="staff_identity_subject_not_reserved"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} = {self.molam_subject}"

    def clean(self) -> None:
        super().clean()
        subject = self.molam_subject or ""
        if subject != subject.strip():
            raise ValidationError({"molam_subject": "No spaces around the subject."})
        if subject_reserved(subject):
            raise ValidationError(
                {"molam_subject": "Reserved for other actors (user:, system, anonymous)."}
            )
