"""/api/v1/ routes of the loyalty resources."""

from django.urls import path, register_converter

from . import campaigns, events, members, programs, redemptions, vouchers


class MemberIdConverter:
    # A member id is any printable text without "/" (the same rule as in request bodies).
    regex = r"[^/\x00-\x1f\x7f]{1,128}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


class VoucherCodeConverter:
    regex = r"[A-Za-z0-9-]{1,32}"

    def to_python(self, value: str) -> str:
        return value.upper()

    def to_url(self, value: str) -> str:
        return value


register_converter(MemberIdConverter, "member")
register_converter(VoucherCodeConverter, "voucher_code")

MEMBER = "programs/<uuid:program_id>/members/<member:member_id>"

urlpatterns = [
    path("events", events.EventsApi.as_view(), name="events"),
    path("events/batch", events.EventsBatchApi.as_view(), name="events-batch"),
    path("redemptions", redemptions.RedemptionsApi.as_view(), name="redemptions"),
    path(
        "redemptions/<uuid:redemption_id>/capture",
        redemptions.RedemptionCaptureApi.as_view(),
        name="redemption-capture",
    ),
    path(
        "redemptions/<uuid:redemption_id>/release",
        redemptions.RedemptionReleaseApi.as_view(),
        name="redemption-release",
    ),
    path("programs", programs.ProgramsApi.as_view(), name="programs"),
    path("programs/<uuid:program_id>", programs.ProgramDetailApi.as_view(), name="program"),
    path(
        "programs/<uuid:program_id>/suspend",
        programs.ProgramSuspendApi.as_view(),
        name="program-suspend",
    ),
    path(MEMBER, members.MemberApi.as_view(), name="member"),
    path(
        f"{MEMBER}/transactions",
        members.MemberTransactionsApi.as_view(),
        name="member-transactions",
    ),
    path(
        f"{MEMBER}/tier-history",
        members.MemberTierHistoryApi.as_view(),
        name="member-tier-history",
    ),
    path(
        f"{MEMBER}/adjustments",
        members.MemberAdjustmentsApi.as_view(),
        name="member-adjustments",
    ),
    path(f"{MEMBER}/freeze", members.MemberFreezeApi.as_view(), name="member-freeze"),
    path(f"{MEMBER}/unfreeze", members.MemberUnfreezeApi.as_view(), name="member-unfreeze"),
    path("vouchers", vouchers.VouchersApi.as_view(), name="vouchers"),
    path("vouchers/<voucher_code:code>", vouchers.VoucherDetailApi.as_view(), name="voucher"),
    path(
        "vouchers/<voucher_code:code>/redeem",
        vouchers.VoucherRedeemApi.as_view(),
        name="voucher-redeem",
    ),
    path("campaigns", campaigns.CampaignsApi.as_view(), name="campaigns"),
    path("campaigns/<uuid:campaign_id>", campaigns.CampaignDetailApi.as_view(), name="campaign"),
]
