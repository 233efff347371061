"""Vouchers issued by captured redemptions: list, read, redeem (exactly once)."""

from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from access.idempotency import idempotent
from access.schema import COMMON_ERRORS, IDEMPOTENCY_KEY, WRITE_ERRORS
from access.scoping import scope_queryset, voucher_get_for_caller

from ..models import Voucher
from ..services import voucher_redeem
from .base import LoyaltyApi, no_input, paginated, validated
from .members import PAGE_PARAMS
from .serializers import (
    VoucherFilterSerializer,
    VoucherSerializer,
    voucher_body,
)


class VouchersApi(LoyaltyApi):
    method_permissions = {"get": "vouchers:read"}

    @extend_schema(
        operation_id="vouchers_list",
        summary="Vouchers the caller may see, newest first",
        parameters=[VoucherFilterSerializer, *PAGE_PARAMS],
        responses={200: VoucherSerializer(many=True), **COMMON_ERRORS},
    )
    def get(self, request):
        filters = validated(VoucherFilterSerializer, request.query_params)
        vouchers = scope_queryset(
            Voucher.objects.select_related("balance"), request.caller, "program__merchant_id"
        )
        if "program_id" in filters:
            vouchers = vouchers.filter(program_id=filters["program_id"])
        if "member_id" in filters:
            vouchers = vouchers.filter(balance__member_id=filters["member_id"])
        if "status" in filters:
            vouchers = vouchers.filter(Voucher.current_status_q(filters["status"]))
        return paginated(self, request, vouchers, voucher_body, ordering=("-created_at", "-id"))


class VoucherDetailApi(LoyaltyApi):
    method_permissions = {"get": "vouchers:read"}

    @extend_schema(
        operation_id="vouchers_read",
        summary="A voucher by its code",
        responses={200: VoucherSerializer, **COMMON_ERRORS},
    )
    def get(self, request, code):
        return Response(voucher_body(voucher_get_for_caller(caller=request.caller, code=code)))


class VoucherRedeemApi(LoyaltyApi):
    method_permissions = {"post": "vouchers:redeem"}
    # A redeem leaves no key of its own in the ledger, and its repeat is a refusal (the
    # voucher is redeemed): the redeem and its answer's record commit together, so a
    # request that dies between them leaves neither, and its retry redeems.
    idempotency_atomic = True

    @extend_schema(
        operation_id="vouchers_redeem",
        summary="Redeem an active voucher (exactly once)",
        parameters=[IDEMPOTENCY_KEY],
        request=None,
        responses={200: VoucherSerializer, **WRITE_ERRORS},
    )
    @idempotent
    def post(self, request, code):
        no_input(request)
        voucher = voucher_get_for_caller(caller=request.caller, code=code)
        voucher = voucher_redeem(voucher=voucher, actor=request.caller.actor)
        return Response(voucher_body(voucher))
