"""A member of a program: balance, transaction history, tier history, adjustments, freeze."""

import hashlib

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response

from access.approval_gate import approval_gate, approval_pending_body
from access.caller import Caller
from access.idempotency import idempotent, replay_headers
from access.schema import COMMON_ERRORS, IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import balance_get_for_caller

from ..models import LedgerEntry, MemberBalance, TierSnapshot
from ..services import EventInput, balance_set_frozen, event_ingest
from .base import LoyaltyApi, paginated, validated
from .events import ADJUSTMENT_KEY_PREFIX, adjustment_gate, ingest_body
from .serializers import (
    AdjustmentInputSerializer,
    ApprovalPendingSerializer,
    BalanceSerializer,
    IngestResultSerializer,
    ReasonInputSerializer,
    TierSnapshotSerializer,
    TransactionFilterSerializer,
    TransactionSerializer,
    balance_body,
    entry_body,
    tier_snapshot_body,
)

PAGE_PARAMS = [
    OpenApiParameter("cursor", str, description="Opaque cursor from `next`/`previous`."),
    OpenApiParameter("limit", int, description="Page size, 1 to 200 (default 50)."),
]


class MemberApi(LoyaltyApi):
    method_permissions = {"get": "members:read"}

    @extend_schema(
        operation_id="members_read",
        summary="A member's balance",
        responses={200: BalanceSerializer, **COMMON_ERRORS},
    )
    def get(self, request, program_id, member_id):
        balance = balance_get_for_caller(
            caller=request.caller, program_id=program_id, member_id=member_id
        )
        return Response(balance_body(balance))


class MemberTransactionsApi(LoyaltyApi):
    method_permissions = {"get": "members:read"}

    @extend_schema(
        operation_id="members_transactions",
        summary="A member's ledger entries, newest first",
        parameters=[TransactionFilterSerializer, *PAGE_PARAMS],
        responses={200: TransactionSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request, program_id, member_id):
        filters = validated(TransactionFilterSerializer, request.query_params)
        balance = balance_get_for_caller(
            caller=request.caller, program_id=program_id, member_id=member_id
        )
        entries = LedgerEntry.objects.filter(balance=balance)
        if filters.get("type"):
            entries = entries.filter(type__in=sorted(filters["type"]))
        if "since" in filters:
            entries = entries.filter(created_at__gte=filters["since"])
        if "until" in filters:
            entries = entries.filter(created_at__lt=filters["until"])
        return paginated(self, request, entries, entry_body)


class MemberTierHistoryApi(LoyaltyApi):
    method_permissions = {"get": "members:read"}

    @extend_schema(
        operation_id="members_tier_history",
        summary="A member's tier changes, newest first",
        parameters=PAGE_PARAMS,
        responses={200: TierSnapshotSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request, program_id, member_id):
        balance = balance_get_for_caller(
            caller=request.caller, program_id=program_id, member_id=member_id
        )
        snapshots = TierSnapshot.objects.filter(balance=balance)
        return paginated(self, request, snapshots, tier_snapshot_body)


_LEDGER_KEY_LENGTH = LedgerEntry._meta.get_field("idempotency_key").max_length
_DIGEST_PREFIX = "sha256:"


def adjustment_ledger_key(key: str, caller: Caller) -> str:
    """The ledger key of an adjustment sent with Idempotency-Key `key`: prefixed so it never
    collides with an event of the same key. A key too long to take the prefix (the header
    allows as many characters as the column holds) is replaced by its digest, of fixed length;
    shorter keys keep the ledger key they always had, so repeats of earlier adjustments still
    find their entry. A key that itself starts with the digest's `sha256:` is digested too:
    kept as it is, it could spell the digest of another, longer key and take its entry.

    Keys are the caller's (`Caller.idempotency_scope`): a merchant's callers share the
    program's, but each platform person has their own, so theirs is digested with their
    scope: two people who chose the same key each adjust (a key has no space: no key of the
    merchant's digests to the same text). Platform people's adjustments made before keys were
    theirs (none outside tests: the API was not yet released) were keyed in the shared form."""
    if caller.merchant_id is None:
        return _digested(f"{caller.idempotency_scope} {key}")
    return _shared_ledger_key(key)


def _shared_ledger_key(key: str) -> str:
    ledger_key = f"{ADJUSTMENT_KEY_PREFIX}{key}"
    if len(ledger_key) <= _LEDGER_KEY_LENGTH and not key.startswith(_DIGEST_PREFIX):
        return ledger_key
    return _digested(key)


def _digested(text: str) -> str:
    return f"{ADJUSTMENT_KEY_PREFIX}{_DIGEST_PREFIX}{hashlib.sha256(text.encode()).hexdigest()}"


class MemberAdjustmentsApi(LoyaltyApi):
    method_permissions = {"post": "members:adjust"}

    @extend_schema(
        operation_id="members_adjust",
        summary="Credit or debit a member's points (over the threshold: approval first)",
        parameters=[IDEMPOTENCY_KEY],
        request=AdjustmentInputSerializer,
        responses={
            201: IngestResultSerializer,
            202: OpenApiResponse(ApprovalPendingSerializer, "Waiting for approval."),
            **WRITE_ERRORS,
        },
    )
    @idempotent
    def post(self, request, program_id, member_id):
        data = validated(AdjustmentInputSerializer, request.data)
        balance = balance_get_for_caller(
            caller=request.caller, program_id=program_id, member_id=member_id
        )
        event = EventInput(
            type="manual_adjust",
            member_id=balance.member_id,
            idempotency_key=adjustment_ledger_key(request.idempotency_key, request.caller),
            points=data["points"],
            reason=data["reason"],
        )
        pending = adjustment_gate(program=balance.program, event=event, caller=request.caller)
        if pending is not None:
            return Response(approval_pending_body(pending), status=202)
        result = event_ingest(program=balance.program, event=event, actor=request.caller.actor)
        # The entry the key already wrote (its HTTP record gone): answered as a replay.
        return Response(ingest_body(result), status=201, headers=replay_headers(result.replayed))


class _FreezeApi(LoyaltyApi):
    method_permissions = {"post": "members:freeze"}

    def _set(self, request, program_id, member_id, *, frozen: bool):
        data = validated(ReasonInputSerializer, request.data)
        balance = balance_get_for_caller(
            caller=request.caller, program_id=program_id, member_id=member_id
        )
        if balance.is_frozen == frozen:
            # Already so: nothing to change, to approve or to audit (as a program suspended
            # again). The service checks again under its lock.
            return Response(balance_body(balance))
        if frozen:
            pending = approval_gate(
                operation="member_freeze",
                program=balance.program,
                target=f"balance:{balance.program_id}:{balance.member_id}",
                actor=request.caller.actor,
                payload={
                    "program_id": str(balance.program_id),
                    "member_id": balance.member_id,
                    "reason": data["reason"],
                },
            )
            if pending is not None:
                return Response(approval_pending_body(pending), status=202)
        balance_set_frozen(
            program=balance.program,
            member_id=balance.member_id,
            frozen=frozen,
            actor=request.caller.actor,
            reason=data["reason"],
        )
        return Response(balance_body(MemberBalance.objects.get(pk=balance.pk)))


class MemberFreezeApi(_FreezeApi):
    @extend_schema(
        operation_id="members_freeze",
        summary="Freeze a member: no earning, no redemption",
        parameters=[IDEMPOTENCY_KEY],
        request=ReasonInputSerializer,
        responses={
            200: BalanceSerializer,
            202: OpenApiResponse(ApprovalPendingSerializer, "Waiting for approval."),
            **WRITE_ERRORS,
        },
    )
    @idempotent
    def post(self, request, program_id, member_id):
        return self._set(request, program_id, member_id, frozen=True)


class MemberUnfreezeApi(_FreezeApi):
    @extend_schema(
        operation_id="members_unfreeze",
        summary="Unfreeze a member",
        parameters=[IDEMPOTENCY_KEY],
        request=ReasonInputSerializer,
        responses={200: BalanceSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, program_id, member_id):
        return self._set(request, program_id, member_id, frozen=False)
