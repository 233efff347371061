"""The operations that need approval: their policy, how their payload is validated, and how
an approved request runs.

Each operation runs a loyalty service *inside* the approval's transaction, so the last
approval, the change and the request's outcome commit together (or not at all). The loyalty
entry points are `@transaction.atomic(durable=True)`, which refuses to nest; we call their
undecorated bodies (`__wrapped__`, set by `functools.wraps` in Django's decorator) or, for
ingestion, its documented in-transaction function. `test_registry.py` checks both still hold.

Payload contracts (what `access.approval_gate` callers pass; JSON, decimals as strings):
- balance_adjustment: program_id, member_id, points, reason, idempotency_key
- budget_change:      program_id, changes (the program update, JSON, with budget_limit:
                      a string or null for no limit)
- program_suspend:    program_id, reason
- member_freeze:      program_id, member_id, reason
"""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.utils.dateparse import parse_datetime

from access.permissions import ROLE_PERMISSIONS
from loyalty.actors import Actor
from loyalty.errors import NotFound, ValidationFailed
from loyalty.models import Program
from loyalty.roles import ROLES
from loyalty.services import balance_set_frozen, program_set_status, program_update
from loyalty.services.ingestion import (
    EventInput,
    event_replay,
    event_validate,
    ingest_in_transaction,
)
from loyalty.services.programs import (
    UPDATABLE_FIELDS,
    TierInput,
    budget_limit_check,
    program_snapshot,
)

from .models import ApprovalPolicy, Operation

DEFAULT_TTL_HOURS = 72


@dataclass(frozen=True)
class Policy:
    operation: str
    enabled: bool
    threshold: Decimal | None
    required_roles: tuple[str, ...]
    ttl_hours: int

    def needs_approval(self, amount: Decimal | None) -> bool:
        if not self.enabled:
            return False
        if self.threshold is None or self.operation in NO_AMOUNT:
            return True
        # A budget change without an amount adds or removes the limit: no threshold bounds it.
        return amount is None or abs(amount) > self.threshold


NO_AMOUNT = {Operation.PROGRAM_SUSPEND, Operation.MEMBER_FREEZE}


def policy_default(operation: str) -> Policy:
    thresholds = settings.LOYALTY_APPROVAL_THRESHOLDS
    roles = tuple(settings.LOYALTY_APPROVAL_REQUIRED_ROLES)
    ttl = getattr(settings, "LOYALTY_APPROVAL_TTL_HOURS", DEFAULT_TTL_HOURS)
    enabled = True
    if operation == Operation.MEMBER_FREEZE:
        enabled = settings.LOYALTY_APPROVAL_FREEZE_REQUIRED
    return Policy(operation, enabled, thresholds.get(operation), roles, ttl)


def policy_get(operation: str) -> Policy:
    """The operation's policy: the database row when finance set one, else settings."""
    if operation not in Operation.values:
        raise ValueError(f"unknown operation {operation!r}")
    row = ApprovalPolicy.objects.filter(operation=operation).first()
    if row is None:
        return policy_default(operation)
    return Policy(operation, row.enabled, row.threshold, tuple(row.required_roles), row.ttl_hours)


# The roles whose people decide approvals (`approvals:decide`). Not `system`, which workers
# and internal services hold: a machine credential approving would be no second person.
DECIDING_ROLES = tuple(
    role for role in ROLES if role != "system" and "approvals:decide" in ROLE_PERMISSIONS[role]
)


def policy_errors(
    *, operation: str, threshold: Decimal | None, required_roles: list[str], ttl_hours: int
) -> dict[str, list[str]]:
    """Per-field problems of a policy (empty when valid); shared with the admin form."""
    errors = {}
    if operation not in Operation.values:
        errors["operation"] = [f"One of {Operation.values}."]
    if threshold is not None and threshold < 0:
        errors["threshold"] = ["Must not be negative."]
    unknown = [r for r in required_roles if r not in DECIDING_ROLES]
    if not required_roles or unknown or len(set(required_roles)) != len(required_roles):
        errors["required_roles"] = [
            f"Distinct roles among {list(DECIDING_ROLES)} (those who decide), at least one."
        ]
    if ttl_hours is None or ttl_hours < 1:
        errors["ttl_hours"] = ["At least one hour."]
    return errors


LOOSENING_NEEDS_PLATFORM_ADMIN = (
    "Only a platform administrator (superuser) may loosen an approval policy: otherwise one "
    "person could lift the control that needs two."
)


def policy_loosening(
    *, operation: str, enabled: bool, threshold: Decimal | None, required_roles: list[str]
) -> dict[str, list[str]]:
    """The fields in which a new policy asks for fewer approvals than the one in force:
    disabling it, a higher threshold (or one where there was none: "always"), a required
    role dropped. Tightening (and the requests' time to live) is any finance person's."""
    if operation not in Operation.values:
        return {}
    current = policy_get(operation)
    if not current.enabled:
        return {}  # nothing is enforced: any new policy asks for at least as much
    loosened = {}
    if not enabled:
        loosened["enabled"] = [LOOSENING_NEEDS_PLATFORM_ADMIN]
    elif threshold is not None and (current.threshold is None or threshold > current.threshold):
        loosened["threshold"] = [LOOSENING_NEEDS_PLATFORM_ADMIN]
    # `system` was once accepted as a required role and no longer is: dropping it is no
    # loosening (no person held it), or such a policy could never be edited by finance.
    if set(current.required_roles) - set(required_roles) - {"system"}:
        loosened["required_roles"] = [LOOSENING_NEEDS_PLATFORM_ADMIN]
    return loosened


# --- payload validation -------------------------------------------------------------------


def _require(payload: dict, *names: str) -> dict:
    missing = {n: ["This field is required."] for n in names if payload.get(n) in (None, "")}
    if missing:
        raise ValidationFailed("The approval payload is incomplete.", errors=missing)
    return payload


def _decimal(value: Any, field: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError) as exc:
        raise ValidationFailed(errors={field: ["A decimal number is required."]}) from exc
    if not number.is_finite():
        raise ValidationFailed(errors={field: ["A finite number is required."]})
    return number


def _validate_adjustment(payload: dict) -> dict:
    _require(payload, "program_id", "member_id", "points", "reason", "idempotency_key")
    points = _decimal(payload["points"], "points")
    if points == 0 or points != points.quantize(Decimal("0.01")):
        raise ValidationFailed(errors={"points": ["Non-zero, at most 2 decimal places."]})
    return {
        "program_id": str(payload["program_id"]),
        "member_id": str(payload["member_id"]),
        "points": str(points),
        "reason": str(payload["reason"]),
        "idempotency_key": str(payload["idempotency_key"]),
        **_adjustment_extras(payload),
    }


def _adjustment_extras(payload: dict) -> dict:
    """The optional fields of the event an adjustment request was made of (amount, currency,
    reference, original_reference, module, occurred_at, metadata), as it sent them: the
    approved entry is that event, and a resend of it is its replay."""
    extras, errors = {}, {}
    amount = payload.get("amount")
    if amount is not None:
        extras["amount"] = str(_decimal(amount, "amount"))
    for name in ("currency", "reference", "original_reference", "module"):
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = ["A text is required."]
        elif value:
            extras[name] = value
    occurred_at = payload.get("occurred_at")
    if occurred_at is not None:
        parsed = parse_datetime(occurred_at) if isinstance(occurred_at, str) else None
        if parsed is None or parsed.tzinfo is None:
            errors["occurred_at"] = ["An ISO 8601 time with its UTC offset is required."]
        else:
            extras["occurred_at"] = occurred_at
    metadata = payload.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        errors["metadata"] = ["A JSON object is required."]
    elif metadata:
        extras["metadata"] = metadata
    if errors:
        raise ValidationFailed("The approval payload is invalid.", errors=errors)
    return extras


def _validate_budget(payload: dict) -> dict:
    """A program update that changes the budget limit; the whole update waits for approval
    (the other fields of the same PATCH run with it), or just `budget_limit`."""
    _require(payload, "program_id")
    changes = payload.get("changes")
    if changes is None:
        changes = {"budget_limit": payload.get("budget_limit", _MISSING)}
    if not isinstance(changes, dict) or changes.get("budget_limit", _MISSING) is _MISSING:
        raise ValidationFailed(errors={"budget_limit": ["This field is required (or null)."]})
    unknown = set(changes) - UPDATABLE_FIELDS - {"tiers"}
    if unknown:
        raise ValidationFailed(errors={f: ["This field cannot be changed."] for f in unknown})
    limit = changes["budget_limit"]
    if limit is not None:
        limit = _decimal(limit, "budget_limit")
        if limit < 0:
            raise ValidationFailed(errors={"budget_limit": ["Must not be negative."]})
        # Refused now, not at the last approval (which would leave the request pending).
        currency = (
            Program.objects.filter(pk=payload["program_id"])
            .values_list("currency", flat=True)
            .first()
        )
        if currency is not None:  # no such program: the run answers it
            budget_limit_check(limit, currency)
    return {
        "program_id": str(payload["program_id"]),
        "changes": {**changes, "budget_limit": None if limit is None else str(limit)},
    }


_MISSING = object()


def _validate_suspend(payload: dict) -> dict:
    _require(payload, "program_id")
    return {"program_id": str(payload["program_id"]), "reason": str(payload.get("reason", ""))}


def _validate_freeze(payload: dict) -> dict:
    _require(payload, "program_id", "member_id")
    return {
        "program_id": str(payload["program_id"]),
        "member_id": str(payload["member_id"]),
        "reason": str(payload.get("reason", "")),
    }


# --- execution (inside the approval's transaction) ----------------------------------------


def in_transaction(service: Callable) -> Callable:
    """The body of a durable service, to run within the caller's transaction."""
    body = getattr(service, "__wrapped__", None)
    if body is None:
        raise TypeError(f"{service.__name__} is not a transaction-decorated service")
    return body


def _program(payload: dict) -> Program:
    program = Program.objects.filter(pk=payload["program_id"]).first()
    if program is None:
        raise NotFound("No such program.")
    return program


def adjustment_event(payload: dict) -> EventInput:
    """The manual_adjust event an adjustment request was made of (its stored payload)."""
    occurred_at = payload.get("occurred_at")
    return EventInput(
        type="manual_adjust",
        member_id=payload["member_id"],
        idempotency_key=payload["idempotency_key"],
        points=Decimal(payload["points"]),
        reason=payload["reason"],
        amount=None if payload.get("amount") is None else Decimal(payload["amount"]),
        currency=payload.get("currency"),
        reference=payload.get("reference", ""),
        original_reference=payload.get("original_reference", ""),
        module=payload.get("module", ""),
        occurred_at=None if occurred_at is None else parse_datetime(occurred_at),
        metadata=payload.get("metadata") or {},
    )


def _run_adjustment(payload: dict, actor: Actor) -> dict:
    program = _program(payload)
    event = adjustment_event(payload)
    event_validate(program, event)
    result = event_replay(program, event) or ingest_in_transaction(
        program=program, event=event, actor=actor
    )
    return result.as_dict()


def _run_budget(payload: dict, actor: Actor) -> dict:
    changes = dict(payload["changes"])
    tiers = changes.pop("tiers", None)
    # JSON strings go back to model types in program_update's full_clean; tiers by hand.
    program = in_transaction(program_update)(
        program_id=payload["program_id"],
        changes=changes,
        actor=actor,
        tiers=None if tiers is None else [_tier(t) for t in tiers],
    )
    return {"program_id": str(program.pk), **program_snapshot(program)}


def _tier(data: dict) -> TierInput:
    return TierInput(
        name=data["name"],
        **{k: Decimal(str(data[k])) for k in ("min_points", "min_spend", "earn_multiplier")
           if data.get(k) is not None},
    )  # fmt: skip


def _run_suspend(payload: dict, actor: Actor) -> dict:
    program = in_transaction(program_set_status)(
        program_id=payload["program_id"],
        status=Program.Status.SUSPENDED,
        actor=actor,
        reason=payload["reason"],
    )
    return {"program_id": str(program.pk), "status": program.status}


def _run_freeze(payload: dict, actor: Actor) -> dict:
    balance = in_transaction(balance_set_frozen)(
        program=_program(payload),
        member_id=payload["member_id"],
        frozen=True,
        actor=actor,
        reason=payload["reason"],
    )
    return {"member_id": balance.member_id, "is_frozen": balance.is_frozen}


@dataclass(frozen=True)
class OperationSpec:
    validate: Callable[[dict], dict]
    run: Callable[[dict, Actor], dict]


OPERATIONS: dict[str, OperationSpec] = {
    Operation.BALANCE_ADJUSTMENT: OperationSpec(_validate_adjustment, _run_adjustment),
    Operation.BUDGET_CHANGE: OperationSpec(_validate_budget, _run_budget),
    Operation.PROGRAM_SUSPEND: OperationSpec(_validate_suspend, _run_suspend),
    Operation.MEMBER_FREEZE: OperationSpec(_validate_freeze, _run_freeze),
}
