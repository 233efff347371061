"""Wire shapes of the loyalty resources (DESIGN.md "Wire format": these names are a contract).

Responses are built by plain functions (`*_body`) from model rows; the serializers next to
them describe the same shapes for the OpenAPI schema and parse inputs.
"""

from collections.abc import Mapping
from decimal import Decimal

from rest_framework import serializers

from access.idempotency import KEY_REGEX

from ..errors import ValidationFailed
from ..models import (
    EXPIRY_DAYS,
    EXPIRY_WARNING_DAYS,
    HOLD_TTL_SECONDS,
    MERCHANT_ID_PATTERN,
    TIER_QUALIFYING_DAYS,
    VOUCHER_VALIDITY_DAYS,
    Campaign,
    LedgerEntry,
    MemberBalance,
    Program,
    Redemption,
    TierSnapshot,
    Voucher,
)
from ..money import ZERO, currency_choices
from ..services.budget import budget_spent
from ..services.ingestion import EVENT_TYPES
from ..services.programs import tier_order
from .fields import AwareDateTime, DecimalString, JSONObject, MemberId, StrictDate, Text, iso

CURRENCIES = [code for code, _ in currency_choices()]


# --- bodies --------------------------------------------------------------------------------


class StrictInput(serializers.Serializer):
    """A request body that may hold only its own fields. DRF drops the others silently, so a
    misspelled `max_earn_per_dya` created an uncapped program and a PATCH of `currency` (not
    changeable) answered 200 with nothing changed; here each unknown field is a 400
    `validation_error` naming it. (Event bodies are parsed by `event_parse`, not here.)"""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = [name for name in data if name not in self.fields]
            if unknown:
                raise serializers.ValidationError(
                    {str(name): ["Not a field of this request."] for name in unknown}
                )
            mistyped = {
                name: [message]
                for name, value in data.items()
                if value is not None
                and (message := _json_type_error(self.fields[name], value)) is not None
            }
            if mistyped:
                raise serializers.ValidationError(mistyped)
        return super().to_internal_value(data)


# DRF coerces what it can: "yes" and 1 to true, "12", "١٢" and 12.0 to 12, 123 to "123", an
# integer to a UUID. A body's fields take their own JSON type only (decimals are strings,
# DecimalString, and parse on their own).
_JSON_TYPES = (
    (serializers.BooleanField, (bool,), "Must be true or false."),
    (serializers.IntegerField, (int,), "Must be a whole JSON number."),
    (serializers.UUIDField, (str,), "Must be a UUID string."),
    (serializers.DateField, (str,), "Must be a date string (YYYY-MM-DD)."),
    (serializers.CharField, (str,), "Must be a string."),
)


def _json_type_error(field, value) -> str | None:
    for field_class, types, message in _JSON_TYPES:
        if isinstance(field, field_class):
            wrong = type(value) not in types  # bool is an int subclass: by exact type
            return message if wrong else None
    return None


def balance_body(balance: MemberBalance) -> dict:
    return {
        "member_id": balance.member_id,
        "program_id": str(balance.program_id),
        "points_balance": str(balance.points_balance),
        "locked": str(balance.locked),
        "available": str(balance.available),
        # Points waiting for a return window to activate (roadmap); none yet.
        "pending": str(ZERO),
        "tier": balance.tier,
        "lifetime_earned": str(balance.lifetime_earned),
        "lifetime_redeemed": str(balance.lifetime_redeemed),
        "lifetime_spend": str(balance.lifetime_spend),
        "is_frozen": balance.is_frozen,
        "fraud_flags": balance.fraud_flags,
        "churn_risk": str(balance.churn_risk),
        "engagement_score": str(balance.engagement_score),
        "last_activity_at": iso(balance.last_activity_at),
        "created_at": iso(balance.created_at),
    }


def entry_body(entry: LedgerEntry) -> dict:
    return {
        "transaction_id": str(entry.pk),
        "type": entry.type,
        "points": str(entry.points),
        "balance_after": str(entry.balance_after),
        "amount": None if entry.amount is None else str(entry.amount),
        "currency": entry.currency or None,
        "module": entry.module,
        "reference": entry.reference,
        "reason": entry.reason,
        "original_transaction_id": None
        if entry.original_entry_id is None
        else str(entry.original_entry_id),
        "redemption_id": None if entry.redemption_id is None else str(entry.redemption_id),
        "breakdown": (entry.details or {}).get("breakdown", {}),
        "metadata": entry.metadata,
        "actor_role": entry.actor_role,
        "occurred_at": iso(entry.occurred_at),
        "created_at": iso(entry.created_at),
    }


def tier_snapshot_body(snapshot: TierSnapshot) -> dict:
    return {
        "id": str(snapshot.pk),
        "from_tier": snapshot.from_tier,
        "to_tier": snapshot.to_tier,
        "reason": snapshot.reason,
        "points_balance": str(snapshot.points_balance),
        "lifetime_spend": str(snapshot.lifetime_spend),
        "actor_id": snapshot.actor_id,
        "rolled_back_at": iso(snapshot.rolled_back_at),
        "created_at": iso(snapshot.created_at),
    }


def voucher_body(voucher: Voucher) -> dict:
    return {
        "code": voucher.code,
        "type": voucher.type,
        "value": str(voucher.value),
        "currency": voucher.currency,
        "expires_at": iso(voucher.expires_at),
        "status": voucher.current_status,
        "program_id": str(voucher.program_id),
        "member_id": voucher.balance.member_id,
        "redeemed_at": iso(voucher.redeemed_at),
        "created_at": iso(voucher.created_at),
    }


def redemption_body(redemption: Redemption) -> dict:
    return {
        "id": str(redemption.pk),
        "program_id": str(redemption.program_id),
        "member_id": redemption.balance.member_id,
        "status": redemption.status,
        "points": str(redemption.points),
        "reward_type": redemption.reward_type,
        "expires_at": iso(redemption.expires_at),
        "voucher": None if redemption.voucher is None else voucher_body(redemption.voucher),
        "created_at": iso(redemption.created_at),
        "finished_at": iso(redemption.finished_at),
    }


def program_body(program: Program) -> dict:
    return {
        "id": str(program.pk),
        "merchant_id": program.merchant_id,
        "name": program.name,
        "currency": program.currency,
        "timezone": program.timezone,
        "status": program.status,
        "earn_rate": _plain(program.earn_rate),
        "point_value": _plain(program.point_value),
        "expiry_days": program.expiry_days,
        "expiry_rounding": program.expiry_rounding,
        "expiry_warning_days": program.expiry_warning_days,
        "budget_limit": None if program.budget_limit is None else str(program.budget_limit),
        "budget_spent": str(budget_spent(program=program)),
        "max_earn_per_day": None
        if program.max_earn_per_day is None
        else str(program.max_earn_per_day),
        "fraud_detection_enabled": program.fraud_detection_enabled,
        "refund_policy": program.refund_policy,
        "tier_basis": program.tier_basis,
        "tier_downgrade_policy": program.tier_downgrade_policy,
        "tier_qualifying_days": program.tier_qualifying_days,
        "tier_cycle_date": None
        if program.tier_cycle_date is None
        else program.tier_cycle_date.isoformat(),
        "tiers": [
            {
                "name": tier.name,
                "rank": tier.rank,
                "min_points": str(tier.min_points),
                "min_spend": str(tier.min_spend),
                "earn_multiplier": _plain(tier.earn_multiplier),
            }
            for tier in program.tiers.all()
        ],
        "sira_settings": program.sira_settings,
        "hold_ttl_seconds": program.hold_ttl_seconds,
        "voucher_validity_days": program.voucher_validity_days,
        "created_at": iso(program.created_at),
        "updated_at": iso(program.updated_at),
    }


def campaign_body(campaign: Campaign) -> dict:
    return {
        "id": str(campaign.pk),
        "program_id": str(campaign.program_id),
        "name": campaign.name,
        "segment": campaign.segment,
        "bonus_points": str(campaign.bonus_points),
        "scheduled_at": iso(campaign.scheduled_at),
        "status": campaign.status,
        "awarded_count": campaign.awarded_count,
        "failed_count": campaign.failed_count,
        "created_by": campaign.created_by,
        "created_at": iso(campaign.created_at),
        "updated_at": iso(campaign.updated_at),
        "started_at": iso(campaign.started_at),
        "finished_at": iso(campaign.finished_at),
    }


def _plain(value) -> str:
    """A rate without trailing zeros, with at least two places: "0.02", "1.50", "1.015"."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


# --- schema and input serializers ----------------------------------------------------------
class BalanceSnapshotSerializer(serializers.Serializer):
    points_balance = DecimalString()
    locked = DecimalString()
    available = DecimalString()
    tier = serializers.CharField()


class EventInputSerializer(serializers.Serializer):
    program_id = serializers.UUIDField()
    member_id = MemberId()
    type = serializers.ChoiceField(choices=sorted(EVENT_TYPES))
    amount = DecimalString(required=False, help_text="purchase, refund: money amount.")
    currency = serializers.ChoiceField(choices=CURRENCIES, required=False)
    points = DecimalString(
        required=False, help_text="referral, campaign_bonus, manual_adjust (signed)."
    )
    reason = Text(max_length=500, required=False, allow_blank=True)
    module = Text(max_length=32, required=False, allow_blank=True)
    reference = Text(max_length=128, required=False, allow_blank=True)
    original_reference = Text(
        max_length=128, required=False, allow_blank=True, help_text="refund: the purchase."
    )
    occurred_at = AwareDateTime(required=False)
    metadata = JSONObject(required=False)


class BatchEventInputSerializer(EventInputSerializer):
    idempotency_key = serializers.RegexField(KEY_REGEX, max_length=255)  # schema only


class BatchInputSerializer(serializers.Serializer):
    events = BatchEventInputSerializer(many=True, max_length=1000)


class IngestResultSerializer(serializers.Serializer):
    transaction_id = serializers.CharField()
    type = serializers.CharField()
    member_id = serializers.CharField()
    points = DecimalString()
    balance = BalanceSnapshotSerializer()
    breakdown = serializers.DictField()
    sira = serializers.DictField(allow_null=True)
    created_at = serializers.DateTimeField()


class BatchItemResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    status = serializers.IntegerField()
    replayed = serializers.BooleanField(required=False)
    body = serializers.DictField(required=False)
    error = serializers.DictField(required=False, help_text="A problem-details object.")


class BatchResultSerializer(serializers.Serializer):
    results = BatchItemResultSerializer(many=True)


class ApprovalPendingSerializer(serializers.Serializer):
    approval_request_id = serializers.CharField()
    status = serializers.CharField()
    required_roles = serializers.ListField(child=serializers.CharField())


class VoucherSerializer(serializers.Serializer):
    code = serializers.CharField()
    type = serializers.ChoiceField(choices=Voucher.Type.choices)
    value = DecimalString()
    currency = serializers.CharField()
    expires_at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=Voucher.Status.choices)
    program_id = serializers.UUIDField()
    member_id = serializers.CharField()
    redeemed_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class RedemptionInputSerializer(StrictInput):
    program_id = serializers.UUIDField()
    member_id = MemberId()
    points = DecimalString()
    reward_type = serializers.ChoiceField(choices=Voucher.Type.choices)
    capture = serializers.BooleanField(default=False)


class RedemptionSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    program_id = serializers.UUIDField()
    member_id = serializers.CharField()
    status = serializers.ChoiceField(choices=Redemption.Status.choices)
    points = DecimalString()
    reward_type = serializers.CharField()
    expires_at = serializers.DateTimeField()
    voucher = VoucherSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class BalanceSerializer(serializers.Serializer):
    member_id = serializers.CharField()
    program_id = serializers.UUIDField()
    points_balance = DecimalString()
    locked = DecimalString()
    available = DecimalString()
    pending = DecimalString()
    tier = serializers.CharField()
    lifetime_earned = DecimalString()
    lifetime_redeemed = DecimalString()
    lifetime_spend = DecimalString()
    is_frozen = serializers.BooleanField()
    fraud_flags = serializers.ListField(child=serializers.DictField())
    churn_risk = DecimalString()
    engagement_score = DecimalString()
    last_activity_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class TransactionSerializer(serializers.Serializer):
    transaction_id = serializers.CharField()
    type = serializers.ChoiceField(choices=LedgerEntry.Type.choices)
    points = DecimalString()
    balance_after = DecimalString()
    amount = DecimalString(allow_null=True)
    currency = serializers.CharField(allow_null=True)
    module = serializers.CharField()
    reference = serializers.CharField()
    reason = serializers.CharField()
    original_transaction_id = serializers.CharField(allow_null=True)
    redemption_id = serializers.CharField(allow_null=True)
    breakdown = serializers.DictField()
    metadata = serializers.DictField()
    actor_role = serializers.CharField()
    occurred_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()


class TransactionFilterSerializer(serializers.Serializer):
    type = serializers.MultipleChoiceField(
        choices=LedgerEntry.Type.choices,
        required=False,
        help_text="Entries of these types; repeat it for several (type=purchase&type=refund).",
    )
    since = AwareDateTime(required=False)
    until = AwareDateTime(required=False)


class TierSnapshotSerializer(serializers.Serializer):
    id = serializers.CharField()
    from_tier = serializers.CharField()
    to_tier = serializers.CharField()
    reason = serializers.CharField()
    points_balance = DecimalString()
    lifetime_spend = DecimalString()
    actor_id = serializers.CharField()
    rolled_back_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class AdjustmentInputSerializer(StrictInput):
    points = DecimalString(help_text="Signed: a credit or a debit.")
    reason = Text(max_length=500)


class EmptyInputSerializer(StrictInput):
    """The body of an action that takes no input (capture, release, redeem): none, `{}` (or
    `null`, read as `{}`).
    Anything else is a 400, not ignored: a `voucher_value` or `points` sent to a capture
    must not look as if it had been applied."""


class ReasonInputSerializer(StrictInput):
    reason = Text(max_length=500, required=False, allow_blank=True, default="")


class TierInputSerializer(StrictInput):
    name = serializers.RegexField(r"^[a-z][a-z0-9_]{0,31}$")
    rank = serializers.IntegerField(
        required=False,
        min_value=0,
        help_text="As a read shows it: optional, and when sent it must be the tier's place "
        "(from 0) once the tiers are ordered by min_points then min_spend, which decides it.",
    )
    min_points = DecimalString(required=False, default=Decimal("0"), max_digits=20)
    min_spend = DecimalString(required=False, default=Decimal("0"), max_digits=20)
    earn_multiplier = DecimalString(required=False, default=Decimal("1"), max_digits=6, places=3)

    def validate_earn_multiplier(self, value):
        if value <= 0:
            raise serializers.ValidationError("Must be positive.")
        return value

    def validate_min_points(self, value):
        if value < 0:
            raise serializers.ValidationError("Must not be negative.")
        return value

    def validate_min_spend(self, value):
        if value < 0:
            raise serializers.ValidationError("Must not be negative.")
        return value


class ProgramFieldsSerializer(StrictInput):
    """The fields of a program a client sets (create) or changes (update)."""

    name = Text(max_length=200)
    timezone = Text(max_length=64, required=False)
    earn_rate = DecimalString(max_digits=12, places=6)
    point_value = DecimalString(max_digits=20, places=6)
    expiry_days = serializers.IntegerField(
        min_value=EXPIRY_DAYS[0], max_value=EXPIRY_DAYS[1], required=False, allow_null=True
    )
    expiry_rounding = serializers.ChoiceField(
        choices=Program.ExpiryRounding.choices, required=False
    )
    expiry_warning_days = serializers.IntegerField(
        min_value=EXPIRY_WARNING_DAYS[0], max_value=EXPIRY_WARNING_DAYS[1], required=False
    )
    budget_limit = DecimalString(required=False, allow_null=True, max_digits=20)
    max_earn_per_day = DecimalString(required=False, allow_null=True, max_digits=20)
    fraud_detection_enabled = serializers.BooleanField(required=False)
    refund_policy = serializers.ChoiceField(choices=Program.RefundPolicy.choices, required=False)
    tier_basis = serializers.ChoiceField(choices=Program.TierBasis.choices, required=False)
    tier_downgrade_policy = serializers.ChoiceField(
        choices=Program.DowngradePolicy.choices, required=False
    )
    tier_qualifying_days = serializers.IntegerField(
        min_value=TIER_QUALIFYING_DAYS[0], max_value=TIER_QUALIFYING_DAYS[1], required=False
    )
    tier_cycle_date = StrictDate(
        required=False,
        allow_null=True,
        help_text="The day (in the program's time zone) of the next yearly tier review, "
        "when members may move down: today or later there (a past date is a 400, unless it "
        "is the one the program already has); each review moves it to its first yearly date "
        "after that day. Null: no review.",
    )
    tiers = TierInputSerializer(many=True, required=False, min_length=1, max_length=20)
    sira_settings = JSONObject(required=False)
    hold_ttl_seconds = serializers.IntegerField(
        min_value=HOLD_TTL_SECONDS[0], max_value=HOLD_TTL_SECONDS[1], required=False
    )
    voucher_validity_days = serializers.IntegerField(
        min_value=VOUCHER_VALIDITY_DAYS[0], max_value=VOUCHER_VALIDITY_DAYS[1], required=False
    )

    def validate_sira_settings(self, value):
        from sira.scoring import sira_settings_resolve

        try:
            sira_settings_resolve(value)
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise serializers.ValidationError(str(exc)) from exc
        return value

    def validate_tiers(self, value):
        """The whole list, each tier's `rank` kept for `tier_ranks_check` (a PATCH's tiers are
        checked against the program's basis, which only the view knows)."""
        if self.partial:
            # A PATCH validates partially, and DRF passes that on to the tiers: a tier
            # without its name would pass, its defaults unset. New tiers are a whole list.
            whole = TierInputSerializer(data=self.initial_data.get("tiers"), many=True)
            if not whole.is_valid():
                raise serializers.ValidationError(whole.errors)
            value = whole.validated_data
        return value

    def validate_budget_limit(self, value):
        if value is not None and value < 0:
            raise serializers.ValidationError("Must not be negative.")
        return value

    def validate_max_earn_per_day(self, value):
        if value is not None and value < 0:
            raise serializers.ValidationError("Must not be negative.")
        return value

    def validate_earn_rate(self, value):
        if value < 0:
            raise serializers.ValidationError("Must not be negative.")
        return value

    def validate_point_value(self, value):
        if value <= 0:
            raise serializers.ValidationError("Must be positive.")
        return value


def tier_ranks_check(tiers: list[dict], basis: str) -> list[dict]:
    """A body read back from GET may carry each tier's `rank`: accepted when it is the place
    the thresholds give the tier on the program's basis (points or spend: the only thing that
    decides it), then dropped."""
    first, then = tier_order(basis)
    ordered = sorted(tiers, key=lambda t: (t.get(first, 0), t.get(then, 0)))
    places = {id(tier): place for place, tier in enumerate(ordered)}
    if any(tier.get("rank", places[id(tier)]) != places[id(tier)] for tier in tiers):
        raise ValidationFailed(
            errors={
                "tiers": [
                    f"A tier's rank is its place once ordered by {first} then {then} (the "
                    f"program's tiers are by {basis}); change the thresholds to reorder "
                    "tiers, or leave rank out."
                ]
            }
        )
    return [{k: v for k, v in tier.items() if k != "rank"} for tier in tiers]


class ProgramCreateSerializer(ProgramFieldsSerializer):
    merchant_id = serializers.RegexField(
        MERCHANT_ID_PATTERN,
        required=False,
        help_text="Defaults to the caller's merchant; platform callers must send it.",
    )
    currency = serializers.ChoiceField(choices=CURRENCIES)


class ProgramUpdateSerializer(ProgramFieldsSerializer):
    pass


class ProgramSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    merchant_id = serializers.CharField()
    name = serializers.CharField()
    currency = serializers.CharField()
    timezone = serializers.CharField()
    status = serializers.ChoiceField(choices=Program.Status.choices)
    earn_rate = DecimalString()
    point_value = DecimalString()
    expiry_days = serializers.IntegerField(allow_null=True)
    expiry_rounding = serializers.CharField()
    expiry_warning_days = serializers.IntegerField()
    budget_limit = DecimalString(allow_null=True)
    budget_spent = DecimalString()
    max_earn_per_day = DecimalString(allow_null=True)
    fraud_detection_enabled = serializers.BooleanField()
    refund_policy = serializers.CharField()
    tier_basis = serializers.CharField()
    tier_downgrade_policy = serializers.CharField()
    tier_qualifying_days = serializers.IntegerField()
    tier_cycle_date = serializers.DateField(allow_null=True)
    tiers = serializers.ListField(child=serializers.DictField())
    sira_settings = serializers.DictField()
    hold_ttl_seconds = serializers.IntegerField()
    voucher_validity_days = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ProgramFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Program.Status.choices, required=False)
    merchant_id = serializers.CharField(max_length=64, required=False)


class VoucherFilterSerializer(serializers.Serializer):
    program_id = serializers.UUIDField(required=False)
    member_id = MemberId(required=False)
    status = serializers.ChoiceField(choices=Voucher.Status.choices, required=False)


class CampaignCreateSerializer(StrictInput):
    program_id = serializers.UUIDField()
    name = Text(max_length=200)
    segment = serializers.ChoiceField(choices=Campaign.Segment.choices)
    bonus_points = DecimalString()
    scheduled_at = AwareDateTime()
    status = serializers.ChoiceField(
        choices=[Campaign.Status.DRAFT, Campaign.Status.SCHEDULED], required=False
    )


class CampaignUpdateSerializer(StrictInput):
    name = Text(max_length=200, required=False)
    segment = serializers.ChoiceField(choices=Campaign.Segment.choices, required=False)
    bonus_points = DecimalString(required=False)
    scheduled_at = AwareDateTime(required=False)
    status = serializers.ChoiceField(
        choices=[Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.CANCELLED],
        required=False,
    )


class CampaignSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    program_id = serializers.UUIDField()
    name = serializers.CharField()
    segment = serializers.CharField()
    bonus_points = DecimalString()
    scheduled_at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=Campaign.Status.choices)
    awarded_count = serializers.IntegerField()
    failed_count = serializers.IntegerField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(
        allow_null=True, help_text="When it first ran: its segment is the one as of then."
    )
    finished_at = serializers.DateTimeField(allow_null=True)


class CampaignFilterSerializer(serializers.Serializer):
    program_id = serializers.UUIDField(required=False)
    status = serializers.ChoiceField(choices=Campaign.Status.choices, required=False)
