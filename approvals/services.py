"""Multi-signature approvals: request, approve, reject, expire; policy changes by finance.

Rules (DESIGN.md "Multi-signature approvals"):
- the stored, validated payload is what runs; nobody re-enters data when approving;
- the maker cannot approve (compared by actor id, so no role, not even superuser, bypasses
  it) and making is not approving;
- one person fills one role, one role is filled once (database constraints too);
- a person is one actor on every channel: a staff user linked to their Molam ID subject acts
  in the admin under that subject, and their `user:<pk>` from before the link counts as them
  too (access.selectors.person_actor_ids), so neither rule is dodged by switching channel;
- one pending request per operation and target (a partial unique index decides races);
- rejection needs a reason; rejected and expired requests never run;
- when the last role is filled, the operation runs in the same transaction, exactly once:
  the request row is locked, so of two approvers racing on the last role one runs it and
  the other finds it no longer pending. A domain error of the operation rolls back the
  operation only (a savepoint) and is stored on the request as `failed`.
"""

from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from access.selectors import person_actor_ids
from audit.integrity import normalise_ip
from audit.services import CREDENTIAL_ID_MAX, USER_AGENT_MAX, audit_record
from loyalty.actors import Actor, system_actor
from loyalty.errors import DomainError, IdempotencyKeyReused, NotFound, ValidationFailed
from loyalty.models import Program

from .errors import (
    AlreadyApproved,
    ApprovalExpired,
    ApprovalNotPending,
    ApprovalPendingExists,
    MakerCannotApprove,
    RoleNotRequired,
)
from .models import Approval, ApprovalPolicy, ApprovalRequest, Operation
from .registry import OPERATIONS, policy_default, policy_errors, policy_get, policy_loosening
from .selectors import approvals_due


def approval_request_create(
    *,
    operation: str,
    program: Program,
    target: str,
    payload: dict,
    actor: Actor,
    amount: Decimal | None = None,
) -> ApprovalRequest:
    """Stores a pending request with its validated payload; refuses a second pending request
    for the same operation and target. Joins the caller's transaction when there is one."""
    if operation not in OPERATIONS:
        raise ValidationFailed(errors={"operation": [f"One of {sorted(OPERATIONS)}."]})
    clean = OPERATIONS[operation].validate(payload)
    policy = policy_get(operation)
    # The ledger key an adjustment will write, held while the request is pending.
    ledger_key = clean["idempotency_key"] if operation == Operation.BALANCE_ADJUSTMENT else ""
    try:
        # Its own atomic block (a savepoint inside the caller's transaction): the request and
        # its audit entry commit together, and a refusal by the unique index leaves the
        # caller's transaction usable.
        with transaction.atomic():
            # One past its expiry can never run: it gives way now rather than at the expiry
            # job's next run (or never, with beat down).
            gives_way = Q(operation=operation, target=target)
            if ledger_key:  # so does one holding the ledger key this one needs
                gives_way |= Q(program=program, ledger_key=ledger_key)
            overdue = (
                ApprovalRequest.objects.select_for_update()
                .filter(
                    gives_way,
                    status=ApprovalRequest.Status.PENDING,
                    expires_at__lte=timezone.now(),
                )
                .order_by("pk")  # two may match (target, key): locked in one order by all
            )
            for stale in overdue:
                _expire(stale, system_actor("approval_expiry"))
            request = ApprovalRequest.objects.create(
                operation=operation,
                payload=clean,
                amount=amount,
                program=program,
                merchant_id=program.merchant_id,
                target=target,
                ledger_key=ledger_key,
                maker_id=actor.id,
                maker_role=actor.role,
                maker_ip=normalise_ip(actor.ip),
                maker_user_agent=(actor.user_agent or "")[:USER_AGENT_MAX],
                maker_credential_id=(actor.credential_id or "")[:CREDENTIAL_ID_MAX],
                required_roles=list(policy.required_roles),
                expires_at=timezone.now() + timedelta(hours=policy.ttl_hours),
            )
            _audit(actor, "approval.request", request, after=_state(request))
    except IntegrityError as exc:
        pending = ApprovalRequest.objects.filter(status=ApprovalRequest.Status.PENDING)
        existing = (
            pending.filter(operation=operation, target=target).values_list("pk", flat=True).first()
        )
        holder = None
        if existing is None and ledger_key:
            holder = (
                pending.filter(program=program, ledger_key=ledger_key)
                .values_list("pk", flat=True)
                .first()
            )
        if holder is not None:  # another member's adjustment waits to write that key
            raise IdempotencyKeyReused(
                "This idempotency key is held by a pending approval request.",
                idempotency_key=ledger_key,
                approval_request_id=str(holder),
            ) from exc
        raise ApprovalPendingExists(
            f"Request {existing} for {operation} on {target} is already pending.",
            approval_request_id=str(existing) if existing else None,
        ) from exc
    return request


@transaction.atomic(durable=True)
def approval_approve(
    *, request_id, actor: Actor, roles: set[str] | frozenset[str], comment: str = ""
) -> ApprovalRequest:
    """Adds the actor's approval for one role they hold that is still missing; when it is
    the last one, runs the stored operation once and records its result or error."""
    request = _lock(request_id)
    _refuse_closed(request)
    same_person = person_actor_ids(actor.id)
    if request.maker_id in same_person:
        raise MakerCannotApprove(maker_id=request.maker_id)
    approvals = list(request.approvals.all())
    if any(a.actor_id in same_person for a in approvals):
        raise AlreadyApproved(actor_id=actor.id)
    filled = {a.role for a in approvals}
    role = next((r for r in request.required_roles if r not in filled and r in roles), None)
    if role is None:
        raise RoleNotRequired(
            missing_roles=[r for r in request.required_roles if r not in filled],
            caller_roles=sorted(roles),
        )
    Approval.objects.create(request=request, actor_id=actor.id, role=role, comment=comment)
    _audit(actor, "approval.approve", request, after={"role": role, "comment": comment})
    if filled | {role} >= set(request.required_roles):
        _execute(request, approver=actor)
    return request


@transaction.atomic(durable=True)
def approval_reject(
    *, request_id, actor: Actor, roles: set[str] | frozenset[str], comment: str
) -> ApprovalRequest:
    """Closes a pending request for good; needs a reason. The maker may withdraw their own
    request; anyone else needs one of its required roles."""
    if not (comment or "").strip():
        raise ValidationFailed(errors={"comment": ["A rejection needs a reason."]})
    request = _lock(request_id)
    _refuse_closed(request)
    is_maker = request.maker_id in person_actor_ids(actor.id)
    if not is_maker and not set(roles) & set(request.required_roles):
        raise RoleNotRequired(required_roles=request.required_roles, caller_roles=sorted(roles))
    request.status = ApprovalRequest.Status.REJECTED
    request.reject_reason = comment.strip()
    request.decided_by = actor.id
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "reject_reason", "decided_by", "decided_at"])
    _audit(actor, "approval.reject", request, after={"status": request.status, "reason": comment})
    return request


def approvals_expire(*, actor: Actor, limit: int = 1000) -> int:
    """Marks pending requests past their expiry as expired (one short transaction each)."""
    due = approvals_due().order_by("expires_at").values_list("pk", flat=True)[:limit]
    return sum(approval_expire(request_id=pk, actor=actor) for pk in list(due))


@transaction.atomic(durable=True)
def approval_expire(*, request_id, actor: Actor) -> bool:
    """Expires one pending request past its expiry; False when it was already closed."""
    request = _lock(request_id)
    if request.status != ApprovalRequest.Status.PENDING or request.expires_at > timezone.now():
        return False
    _expire(request, actor)
    return True


def _expire(request: ApprovalRequest, actor: Actor) -> None:
    """Records a pending request, locked by the caller and past its expiry, as expired."""
    request.status = ApprovalRequest.Status.EXPIRED
    request.decided_by = actor.id
    request.decided_at = timezone.now()
    request.save(update_fields=["status", "decided_by", "decided_at"])
    _audit(actor, "approval.expire", request, after={"status": request.status})


@transaction.atomic(durable=True)
def approval_policy_update(
    *,
    operation: str,
    actor: Actor,
    enabled: bool,
    threshold: Decimal | None,
    required_roles: list[str],
    ttl_hours: int,
    may_loosen: bool = False,
) -> ApprovalPolicy:
    """Sets an operation's approval policy (finance); every change is audited. Only a caller
    with `may_loosen` (a platform administrator) may ask for fewer approvals than now."""
    errors = policy_errors(
        operation=operation, threshold=threshold, required_roles=required_roles,
        ttl_hours=ttl_hours,
    )  # fmt: skip
    if errors:
        raise ValidationFailed(errors=errors)
    # Locked before it is compared: two changes at once are each judged against the other's
    # outcome, so neither can loosen what the other just tightened.
    current = policy_default(operation)  # what a row created now holds: the settings'
    policy, created = ApprovalPolicy.objects.select_for_update().get_or_create(
        operation=operation,
        defaults={
            "enabled": current.enabled,
            "threshold": current.threshold,
            "required_roles": list(current.required_roles),
            "ttl_hours": current.ttl_hours,
        },
    )
    if not may_loosen:
        errors = policy_loosening(
            operation=operation, enabled=enabled, threshold=threshold,
            required_roles=required_roles,
        )  # fmt: skip
    if errors:
        raise ValidationFailed(errors=errors)
    before = current if created else policy_get(operation)
    policy.enabled = enabled
    policy.threshold = threshold
    policy.required_roles = list(required_roles)
    policy.ttl_hours = ttl_hours
    policy.updated_by = actor.id
    policy.save()
    audit_record(
        actor=actor,
        action="approval_policy.update",
        entity_type="approval_policy",
        entity_id=operation,
        before=_policy_state(before.enabled, before.threshold, before.required_roles,
                             before.ttl_hours),
        after=_policy_state(enabled, threshold, required_roles, ttl_hours),
    )  # fmt: skip
    return policy


def _policy_state(enabled, threshold, roles, ttl_hours) -> dict:
    return {
        "enabled": enabled,
        "threshold": None if threshold is None else str(threshold),
        "required_roles": list(roles),
        "ttl_hours": ttl_hours,
    }


def _lock(request_id) -> ApprovalRequest:
    request = ApprovalRequest.objects.select_for_update().filter(pk=request_id).first()
    if request is None:
        raise NotFound("No such approval request.")
    return request


def _refuse_closed(request: ApprovalRequest) -> None:
    if request.status != ApprovalRequest.Status.PENDING:
        raise ApprovalNotPending(f"The request is {request.status}.", status=request.status)
    if request.expires_at <= timezone.now():
        # Left pending for the expiry job to record; it can never run from here.
        raise ApprovalExpired(expired_at=request.expires_at.isoformat())


def _execute(request: ApprovalRequest, *, approver: Actor) -> None:
    # The change is made in the maker's name, as the maker asked for it (address, client,
    # credential); the approvals and this execution are audited in the approvers' names.
    maker = Actor(
        id=request.maker_id,
        role=request.maker_role,
        ip=request.maker_ip,
        user_agent=request.maker_user_agent,
        credential_id=request.maker_credential_id,
    )
    spec = OPERATIONS[request.operation]
    try:
        with transaction.atomic():  # a savepoint: a refused operation leaves nothing behind
            # No longer pending while it runs: the ledger key it holds is its own to write
            # (ingestion refuses a key a pending request holds). A refusal rolls this back.
            ApprovalRequest.objects.filter(pk=request.pk).update(
                status=ApprovalRequest.Status.EXECUTED
            )
            result = spec.run(request.payload, maker)
    except DomainError as error:
        request.status = ApprovalRequest.Status.FAILED
        request.error_code = error.code
        request.error_detail = str(error.detail)
        request.result = {"error": {"code": error.code, "detail": str(error.detail),
                                    **{k: str(v) for k, v in error.context.items()}}}  # fmt: skip
        if getattr(error, "errors", None):  # a validation error's reasons, field by field
            request.result["error"]["errors"] = error.errors
    else:
        request.status = ApprovalRequest.Status.EXECUTED
        request.result = result
    request.decided_by = approver.id
    request.decided_at = timezone.now()
    request.save(
        update_fields=["status", "result", "error_code", "error_detail", "decided_by",
                       "decided_at"]
    )  # fmt: skip
    action = "approval.execute" if request.status == "executed" else "approval.fail"
    _audit(approver, action, request, after={"status": request.status,
                                             "error_code": request.error_code or None})  # fmt: skip


def _state(request: ApprovalRequest) -> dict:
    return {
        "operation": request.operation,
        "target": request.target,
        "payload": request.payload,
        "amount": None if request.amount is None else str(request.amount),
        "required_roles": request.required_roles,
        "expires_at": request.expires_at,
        "status": request.status,
    }


def _audit(actor: Actor, action: str, request: ApprovalRequest, *, after: dict) -> None:
    audit_record(
        actor=actor,
        action=action,
        entity_type="approval",
        entity_id=request.pk,
        merchant_id=request.merchant_id,
        after=after,
    )
