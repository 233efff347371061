"""Merchant scoping: a caller bound to a merchant never sees another merchant's objects.

Out of scope and unknown answer the same 404, so ids of other merchants leak nothing.
"""

import uuid

from django.db.models import QuerySet

from loyalty.errors import NotFound
from loyalty.models import Campaign, MemberBalance, Program, Redemption, Voucher

from .caller import Caller
from .rows import RowLookup, all_attnames


def scope_queryset(queryset: QuerySet, caller: Caller, field: str = "merchant_id") -> QuerySet:
    """`queryset` restricted to the caller's merchant (unchanged for platform callers)."""
    if caller.merchant_id is None:
        return queryset
    return queryset.filter(**{field: caller.merchant_id})


def _uuid(value) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError) as exc:
        raise NotFound("No such object.") from exc


def merchant_check(caller: Caller, merchant_id: str) -> None:
    if not caller.can_see(merchant_id):
        raise NotFound("No such merchant.")


def program_lookup(caller: Caller, program_id: uuid.UUID) -> RowLookup:
    """The program `program_id` if the caller may see it, as a lookup of fixed SQL text (every
    write names a program; the ORM would compile the same query anew each time)."""
    if caller.merchant_id is None:
        return RowLookup.of(Program, all_attnames(Program), id=program_id)
    return RowLookup.of(
        Program, all_attnames(Program), id=program_id, merchant_id=caller.merchant_id
    )


def program_get_for_caller(*, caller: Caller, program_id, prefetched=None) -> Program:
    """The program, if the caller may see it. `prefetched`: what `program_lookup` already
    read for this caller (the idempotency claim's statement), used when it is this program."""
    program_id = _uuid(program_id)
    if prefetched is not None and prefetched.pk == program_id:
        return prefetched
    program = program_lookup(caller, program_id).get()
    if program is None:
        raise NotFound("No such program.", program_id=str(program_id))
    return program


def balance_get_for_caller(*, caller: Caller, program_id, member_id: str) -> MemberBalance:
    program = program_get_for_caller(caller=caller, program_id=program_id)
    balance = (
        MemberBalance.objects.filter(program=program, member_id=member_id)
        .select_related("program")
        .first()
    )
    if balance is None:
        raise NotFound("No such member in this program.", member_id=member_id)
    return balance


def redemption_get_for_caller(*, caller: Caller, redemption_id) -> Redemption:
    redemption = (
        scope_queryset(Redemption.objects.all(), caller, "program__merchant_id")
        .select_related("program", "balance", "voucher")
        .filter(pk=_uuid(redemption_id))
        .first()
    )
    if redemption is None:
        raise NotFound("No such redemption.")
    return redemption


def voucher_get_for_caller(*, caller: Caller, code: str) -> Voucher:
    voucher = (
        scope_queryset(Voucher.objects.all(), caller, "program__merchant_id")
        .select_related("program", "balance")
        .filter(code=code)
        .first()
    )
    if voucher is None:
        raise NotFound("No such voucher.")
    return voucher


def campaign_get_for_caller(*, caller: Caller, campaign_id) -> Campaign:
    campaign = (
        scope_queryset(Campaign.objects.all(), caller, "program__merchant_id")
        .select_related("program")
        .filter(pk=_uuid(campaign_id))
        .first()
    )
    if campaign is None:
        raise NotFound("No such campaign.")
    return campaign
