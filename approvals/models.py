"""Multi-signature approval requests, their approvals, and the policy of each operation."""

import uuid

from django.db import models
from django.db.models import Q


class Operation(models.TextChoices):
    BALANCE_ADJUSTMENT = "balance_adjustment"
    BUDGET_CHANGE = "budget_change"
    PROGRAM_SUSPEND = "program_suspend"
    MEMBER_FREEZE = "member_freeze"


class ApprovalPolicy(models.Model):
    """Database override of an operation's approval policy (defaults come from settings).

    Edited by finance through `approval_policy_update`, which audits every change.
    """

    operation = models.CharField(max_length=32, choices=Operation.choices, unique=True)
    enabled = models.BooleanField(default=True, help_text="Whether the operation needs approval.")
    threshold = models.DecimalField(
        max_digits=20,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Points (adjustments) or program currency (budgets) above which approval is "
        "needed; empty: always (when enabled).",
    )
    required_roles = models.JSONField(default=list)
    ttl_hours = models.PositiveIntegerField(default=72)
    updated_by = models.CharField(max_length=128, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "approval policies"

    def __str__(self) -> str:
        return self.operation


class ApprovalRequest(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        EXECUTED = "executed"
        FAILED = "failed"
        REJECTED = "rejected"
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    operation = models.CharField(max_length=32, choices=Operation.choices)
    # The validated input the operation runs with when approved; never edited.
    payload = models.JSONField()
    amount = models.DecimalField(max_digits=20, decimal_places=2, null=True, blank=True)
    program = models.ForeignKey(
        "loyalty.Program", on_delete=models.PROTECT, related_name="approval_requests"
    )
    merchant_id = models.CharField(max_length=64)
    # What the operation acts on: one pending request per (operation, target).
    target = models.CharField(max_length=200)
    # The ledger idempotency key the operation writes (an adjustment's), held while the
    # request is pending: ingestion refuses any other event with that key in the program
    # (`loyalty.services.ingestion.key_holds`), so the approved adjustment can still take it.
    ledger_key = models.CharField(max_length=255, blank=True, default="")
    maker_id = models.CharField(max_length=128)
    maker_role = models.CharField(max_length=32)
    # Where the maker asked from: the executed change is audited in the maker's name, with
    # the maker's own address, client and credential (not the last approver's).
    maker_ip = models.GenericIPAddressField(null=True, blank=True)
    maker_user_agent = models.CharField(max_length=400, blank=True, default="")
    maker_credential_id = models.CharField(max_length=128, blank=True, default="")
    required_roles = models.JSONField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    result = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)
    reject_reason = models.TextField(blank=True)
    decided_by = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["operation", "target"],
                condition=Q(status="pending"),
                name="approval_one_pending_per_target",
            ),
            # Also the index ingestion probes (program, key) with.
            models.UniqueConstraint(
                fields=["program", "ledger_key"],
                condition=Q(status="pending") & ~Q(ledger_key=""),
                name="approval_one_pending_per_ledger_key",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "executed", "failed", "rejected", "expired"]),
                name="approval_status_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status="rejected") | ~Q(reject_reason=""),
                name="approval_rejection_has_reason",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"]),
            models.Index(fields=["program", "status"]),
            models.Index(fields=["merchant_id", "status"]),
        ]

    def __str__(self) -> str:
        return f"{self.operation} {self.target} ({self.status})"

    @property
    def missing_roles(self) -> list[str]:
        filled = {a.role for a in self.approvals.all()}
        return [role for role in self.required_roles if role not in filled]


class Approval(models.Model):
    """One person's approval, filling one required role."""

    request = models.ForeignKey(ApprovalRequest, on_delete=models.PROTECT, related_name="approvals")
    actor_id = models.CharField(max_length=128)
    role = models.CharField(max_length=32)
    comment = models.TextField(blank=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["at", "id"]
        constraints = [
            # One person counts once; one role is filled once.
            models.UniqueConstraint(fields=["request", "actor_id"], name="approval_once_per_actor"),
            models.UniqueConstraint(fields=["request", "role"], name="approval_once_per_role"),
        ]

    def __str__(self) -> str:
        return f"{self.actor_id} as {self.role}"
