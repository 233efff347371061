"""The one gate in front of every operation that needs multi-signature approval.

Operations (DESIGN.md "Multi-signature approvals"; thresholds in `LOYALTY_APPROVAL_THRESHOLDS`):

- `balance_adjustment`: an adjustment, or a `manual_adjust` event on any path (single event,
  batch, adjustments endpoint), of more than `balance_adjustment` points either way
  (default 10,000);
- `budget_change`: a program budget limit change of more than `budget_change` in the
  program's currency (default 50,000); adding or removing the limit always counts;
- `program_suspend`: every program suspension;
- `member_freeze`: a member freeze, only when `LOYALTY_APPROVAL_FREEZE_REQUIRED` is on.

Until the approvals app takes over this function, a gated operation is refused with
`ApprovalRequired` (422 `approval_required`). The contract for the approvals app: return an
object with `pk`, `status` and `required_roles` (the created request); views then answer 202
with `approval_pending_body(...)`. Return None when no approval is needed.
"""

from decimal import Decimal
from typing import Any

from django.conf import settings

from loyalty.actors import Actor
from loyalty.errors import ApprovalRequired
from loyalty.models import Program

OPERATIONS = ("balance_adjustment", "budget_change", "program_suspend", "member_freeze")


def approval_needed(*, operation: str, amount: Decimal | None = None) -> bool:
    """Whether `operation` (with its size `amount`, when it has one) needs approval."""
    thresholds = settings.LOYALTY_APPROVAL_THRESHOLDS
    if operation == "balance_adjustment":
        return amount is not None and abs(amount) > thresholds["balance_adjustment"]
    if operation == "budget_change":
        # None: a limit added or removed, which no threshold can bound.
        return amount is None or abs(amount) > thresholds["budget_change"]
    if operation == "program_suspend":
        return True
    if operation == "member_freeze":
        return settings.LOYALTY_APPROVAL_FREEZE_REQUIRED
    raise ValueError(f"unknown operation {operation!r}")


def approval_gate(
    *,
    operation: str,
    program: Program,
    target: str,
    payload: dict,
    actor: Actor,
    amount: Decimal | None = None,
) -> Any | None:
    """None when the operation may run now; otherwise the pending approval request.

    `payload` is the validated input the operation would run with (JSON-safe); `target`
    names what it acts on (one pending request per operation and target).
    """
    if not approval_needed(operation=operation, amount=amount):
        return None
    raise ApprovalRequired(
        f"The operation {operation} needs approval by {', '.join(required_roles(operation))}.",
        operation=operation,
        required_roles=required_roles(operation),
    )


def required_roles(operation: str) -> list[str]:
    return list(settings.LOYALTY_APPROVAL_REQUIRED_ROLES)


def approval_pending_body(request) -> dict:
    """The 202 body for a pending approval request (DESIGN.md wire format)."""
    return {
        "approval_request_id": str(request.pk),
        "status": str(request.status),
        "required_roles": list(request.required_roles),
    }
