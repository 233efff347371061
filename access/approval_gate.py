"""The one gate in front of every operation that needs multi-signature approval.

Operations (DESIGN.md "Multi-signature approvals"; thresholds in `LOYALTY_APPROVAL_THRESHOLDS`):

- `balance_adjustment`: an adjustment, or a `manual_adjust` event on any path (single event,
  batch, adjustments endpoint), of more than `balance_adjustment` points either way
  (default 10,000);
- `budget_change`: a program budget limit change of more than `budget_change` in the
  program's currency (default 50,000); adding or removing the limit always counts;
- `program_suspend`: every program suspension;
- `member_freeze`: a member freeze, only when `LOYALTY_APPROVAL_FREEZE_REQUIRED` is on.

The policy of each operation (on/off, threshold, required roles, time to live) is the
approvals app's: settings give the defaults, finance overrides them in the database. When an
operation needs approval the gate stores a pending `approvals.ApprovalRequest` with the
validated payload (a second pending one for the same operation and target is refused, 409
`approval_pending_exists`) and returns it; views answer 202 with `approval_pending_body(...)`.
It returns None when no approval is needed.
"""

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from approvals.registry import policy_get
from approvals.services import approval_request_create
from loyalty.actors import Actor
from loyalty.models import Program


def approval_gate(
    *,
    operation: str,
    program: Program,
    target: str,
    payload: dict,
    actor: Actor,
    amount: Decimal | None = None,
    done: Callable[[], bool] | None = None,
    pending: Callable[[], Any | None] | None = None,
) -> Any | None:
    """None when the operation may run now; otherwise the pending approval request.

    `payload` is the validated input the operation would run with (JSON-safe); `target`
    names what it acts on (one pending request per operation and target). For an operation
    with an idempotency key of its own: `done` tells whether that key already did its work
    (a request executed, sent again): such a repeat needs no approval, and the operation run
    now answers it from what the key did, without doing anything again; `pending` gives the
    pending request that waits with that key for the same operation (a repeat sent while it
    waits), which answers it, or None.
    """
    if not approval_needed(operation, amount):
        return None
    if done is not None and done():
        return None
    if pending is not None and (waiting := pending()) is not None:
        return waiting
    return approval_request_create(
        operation=operation,
        program=program,
        target=target,
        payload=payload,
        actor=actor,
        amount=amount,
    )


def approval_needed(operation: str, amount: Decimal | None = None) -> bool:
    """Whether the operation, for `amount`, waits for approval (the gate's first question)."""
    return policy_get(operation).needs_approval(amount)


def approval_pending_body(request) -> dict:
    """The 202 body for a pending approval request (DESIGN.md wire format)."""
    return {
        "approval_request_id": str(request.pk),
        "status": str(request.status),
        "required_roles": list(request.required_roles),
    }
