"""Programs, member balances, the ledger, point lots, redemptions, vouchers, tiers, campaigns.

The ledger is the source of truth: `MemberBalance` is a cache of its entries
(`points_balance == sum(entries)`, `locked == sum(pending holds)`), checked by
`manage.py loyalty_verify`.
"""

import functools
import uuid
import zoneinfo

import pgtrigger
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .money import MONEY_PLACES, currency_choices


def points_field(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=20, decimal_places=2, **kwargs)


def money_field(**kwargs) -> models.DecimalField:
    # Quantizing to the currency's own minor unit, at most these places, happens in
    # loyalty.money (TND's millimes are not kept).
    return models.DecimalField(max_digits=20, decimal_places=MONEY_PLACES, **kwargs)


# The bounds of a program's durations, in the model so that every path (the API, the admin's
# form, the services) refuses what the dates computed from them cannot hold: a lot's expiry,
# a voucher's, a tier window's start (past them, every purchase, capture or tier run failed).
EXPIRY_DAYS = (1, 36500)
EXPIRY_WARNING_DAYS = (0, 3650)
TIER_QUALIFYING_DAYS = (1, 3650)
HOLD_TTL_SECONDS = (30, 86400)
VOUCHER_VALIDITY_DAYS = (1, 3650)


def _bounds(bounds: tuple[int, int]) -> list:
    return [MinValueValidator(bounds[0]), MaxValueValidator(bounds[1])]


# A new program's, unless it sets its own (deploy/example.env).
def default_hold_ttl_seconds() -> int:
    return settings.LOYALTY_HOLD_TTL_SECONDS


def default_voucher_validity_days() -> int:
    return settings.LOYALTY_VOUCHER_VALIDITY_DAYS


# Names some tz databases list that are no place's time: the host's own zone (differs from
# one server to the next), a copy of a default rule set, and a zone meaning "no local time".
_NOT_PLACES = frozenset({"localtime", "posixrules", "Factory"})


@functools.cache
def _known_timezones() -> frozenset[str]:
    # Membership, not ZoneInfo(value): a directory of the tz database ("America", "Etc")
    # raised IsADirectoryError there (a 500). Read once per process: the list walks the disk.
    return frozenset(zoneinfo.available_timezones()) - _NOT_PLACES


def validate_timezone(value: str) -> None:
    if not isinstance(value, str) or value not in _known_timezones():
        raise ValidationError(f"Unknown time zone {value!r}.")


def never_deleted(name: str) -> pgtrigger.Protect:
    """Refuses DELETE in the database itself. Ledger entries, lots and outbox events name
    these rows without a foreign key constraint (see LedgerEntry.program): this trigger is
    what guarantees the rows they name stay."""
    return pgtrigger.Protect(name=name, operation=pgtrigger.Delete)


# The one DELETE of a balance the database lets through: by the transaction that inserted the
# row, before it commits, while the row is still as inserted and no ledger entry names it. A
# batch creates its new members' balances in its own transaction before any item runs, and
# takes back those of members none of whose items wrote an entry (a refused item must leave
# no member behind, as the same event alone would not: loyalty/services/batch.py). Such a
# row was never seen by another transaction (uncommitted), so nothing can name it; once
# committed it is never deleted again.
#
# "Inserted by this transaction": a row a statement can see either was committed by another
# transaction or was written by this one (or one of its savepoints), and `pg_xact_status`
# tells the two apart ("in progress" is only this transaction's own, for a visible row). The
# row's 32-bit xmin is widened to the 64-bit id that function takes from this transaction's
# own id: its ids (savepoints' included) are this transaction's id or later, by less than
# 2^31. A row this transaction updated also carries its xmin, and a frozen row's 32-bit
# xmin can widen to a running transaction's id after wraparound: so the row must also be one
# of the ids the deleting transaction listed as inserted (`loyalty.balances_inserted`, set
# local to it by the batch from its INSERT's RETURNING), and still as inserted (no points,
# nothing locked or earned, not frozen, no flags; no entry).
_BALANCE_DELETE_FUNC = """
IF OLD.id::text = ANY(string_to_array(current_setting('loyalty.balances_inserted', true), ','))
    AND OLD.points_balance = 0 AND OLD.locked = 0 AND OLD.lifetime_earned = 0
    AND OLD.lifetime_redeemed = 0 AND OLD.purchase_count = 0 AND NOT OLD.is_frozen
    AND OLD.fraud_flags = '[]'::jsonb
    AND NOT EXISTS (SELECT FROM loyalty_ledgerentry e WHERE e.balance_id = OLD.id) THEN
    own_xid := pg_current_xact_id()::text::bigint;
    row_xid := own_xid + (OLD.xmin::text::bigint - own_xid % 4294967296 + 6442450944)
        % 4294967296 - 2147483648;
    IF row_xid >= own_xid AND pg_xact_status(row_xid::text::xid8) = 'in progress' THEN
        RETURN OLD;
    END IF;
END IF;
RAISE EXCEPTION 'pgtrigger: Cannot delete rows from % table', TG_TABLE_NAME;
"""


def balance_never_deleted() -> pgtrigger.Trigger:
    """`never_deleted` for balances, but for the one DELETE above (_BALANCE_DELETE_FUNC)."""
    return pgtrigger.Trigger(
        name="balance_never_deleted",
        operation=pgtrigger.Delete,
        when=pgtrigger.Before,
        declare=[("own_xid", "bigint"), ("row_xid", "bigint")],
        func=_BALANCE_DELETE_FUNC,
    )


# A merchant id as the platform writes them (`m_123`): what the API and the key command take.
MERCHANT_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


class Merchant(models.Model):
    """A merchant of the payments platform; its id is the platform's own (e.g. `m_123`).
    Never deleted (refused by a trigger)."""

    id = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        triggers = [never_deleted("merchant_never_deleted")]

    def __str__(self) -> str:
        return self.name or self.id


class Program(models.Model):
    """A loyalty program of a merchant. Never deleted (refused by a trigger): it is closed."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"
        CLOSED = "closed"

    class RefundPolicy(models.TextChoices):
        # A refund of spent points leaves a debt (negative balance) so earn-redeem-refund is
        # no exploit; redemptions are refused until it is repaid.
        ALLOW_NEGATIVE = "allow_negative"
        # Claw back at most the available balance and record the shortfall.
        CAP_AT_AVAILABLE = "cap_at_available"

    class TierBasis(models.TextChoices):
        POINTS = "points"
        SPEND = "spend"

    class DowngradePolicy(models.TextChoices):
        NONE = "none"
        ONE_DOWN = "one_down"
        RECALCULATE = "recalculate"

    class ExpiryRounding(models.TextChoices):
        NONE = "none"
        END_OF_MONTH = "month"
        END_OF_QUARTER = "quarter"
        END_OF_YEAR = "year"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    merchant = models.ForeignKey(Merchant, on_delete=models.PROTECT, related_name="programs")
    name = models.CharField(max_length=200)
    currency = models.CharField(max_length=3, choices=currency_choices())
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    earn_rate = models.DecimalField(
        max_digits=12, decimal_places=6, help_text="Points per currency unit spent."
    )
    point_value = models.DecimalField(
        max_digits=20, decimal_places=6, help_text="Money (program currency) per point."
    )
    expiry_days = models.PositiveIntegerField(
        null=True, blank=True, validators=_bounds(EXPIRY_DAYS)
    )
    expiry_rounding = models.CharField(
        max_length=8, choices=ExpiryRounding.choices, default=ExpiryRounding.NONE
    )
    expiry_warning_days = models.PositiveIntegerField(
        default=30, validators=_bounds(EXPIRY_WARNING_DAYS)
    )
    budget_limit = money_field(null=True, blank=True)
    max_earn_per_day = points_field(null=True, blank=True)
    fraud_detection_enabled = models.BooleanField(default=True)
    refund_policy = models.CharField(
        max_length=20, choices=RefundPolicy.choices, default=RefundPolicy.ALLOW_NEGATIVE
    )
    tier_basis = models.CharField(max_length=8, choices=TierBasis.choices, default=TierBasis.POINTS)
    tier_downgrade_policy = models.CharField(
        max_length=12, choices=DowngradePolicy.choices, default=DowngradePolicy.NONE
    )
    tier_qualifying_days = models.PositiveIntegerField(
        default=365, validators=_bounds(TIER_QUALIFYING_DAYS)
    )
    tier_cycle_date = models.DateField(null=True, blank=True)
    sira_settings = models.JSONField(default=dict, blank=True)
    hold_ttl_seconds = models.PositiveIntegerField(
        default=default_hold_ttl_seconds, validators=_bounds(HOLD_TTL_SECONDS)
    )
    voucher_validity_days = models.PositiveIntegerField(
        default=default_voucher_validity_days, validators=_bounds(VOUCHER_VALIDITY_DAYS)
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["active", "suspended", "closed"]),
                name="program_status_valid",
            ),
            models.CheckConstraint(condition=Q(earn_rate__gte=0), name="program_earn_rate_gte_0"),
            models.CheckConstraint(condition=Q(point_value__gt=0), name="program_point_value_gt_0"),
            models.CheckConstraint(
                condition=Q(budget_limit__isnull=True) | Q(budget_limit__gte=0),
                name="program_budget_limit_gte_0",
            ),
        ]
        indexes = [models.Index(fields=["merchant", "status"])]
        triggers = [never_deleted("program_never_deleted")]

    def __str__(self) -> str:
        return f"{self.name} ({self.currency})"


class Tier(models.Model):
    """A tier of a program; members qualify by `min_points` or `min_spend` (program.tier_basis)."""

    program = models.ForeignKey(Program, on_delete=models.CASCADE, related_name="tiers")
    name = models.CharField(max_length=32)
    rank = models.PositiveSmallIntegerField()
    min_points = points_field(default=0)
    min_spend = money_field(default=0)
    earn_multiplier = models.DecimalField(max_digits=6, decimal_places=3, default=1)

    class Meta:
        ordering = ["program", "rank"]
        constraints = [
            models.UniqueConstraint(fields=["program", "name"], name="tier_unique_name"),
            models.UniqueConstraint(fields=["program", "rank"], name="tier_unique_rank"),
            models.CheckConstraint(condition=Q(earn_multiplier__gt=0), name="tier_multiplier_gt_0"),
        ]

    def __str__(self) -> str:
        return self.name


class BudgetShard(models.Model):
    """One slice of a program's budget counter.

    Awards lock a single random shard (SKIP LOCKED), so concurrent events of one program do
    not queue on one row; `allocated` is this shard's share of the limit (null: no limit).
    """

    # No index of its own: `budget_shard_unique` (program, shard) serves every read by program
    # (an index less to open and lock in every event's transaction, which updates a shard).
    program = models.ForeignKey(
        Program, on_delete=models.CASCADE, related_name="budget_shards", db_index=False
    )
    shard = models.PositiveSmallIntegerField()
    allocated = money_field(null=True, blank=True)
    spent = money_field(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["program", "shard"], name="budget_shard_unique"),
            models.CheckConstraint(
                condition=Q(allocated__isnull=True) | Q(spent__lte=models.F("allocated")),
                name="budget_shard_not_overspent",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.program_id}#{self.shard}"


class MemberBalance(models.Model):
    """A member of a program and their balance; the row every write of that member locks.
    Never deleted once committed (refused by a trigger; see _BALANCE_DELETE_FUNC)."""

    # No index of its own: `balance_unique_member` (program, member_id) serves program lookups.
    program = models.ForeignKey(
        Program, on_delete=models.PROTECT, related_name="balances", db_index=False
    )
    member_id = models.CharField(max_length=128)
    points_balance = points_field(default=0)
    locked = points_field(default=0)
    lifetime_earned = points_field(default=0)
    lifetime_redeemed = points_field(default=0)
    lifetime_spend = money_field(default=0)
    tier = models.CharField(max_length=32, default="basic")
    tier_updated_at = models.DateTimeField(null=True, blank=True)
    churn_risk = models.DecimalField(max_digits=5, decimal_places=4, default=0)
    engagement_score = models.DecimalField(max_digits=5, decimal_places=4, default=0)
    fraud_flags = models.JSONField(default=list, blank=True)
    is_frozen = models.BooleanField(default=False)
    encrypted_meta = models.BinaryField(null=True, blank=True, editable=False)
    # Daily cap bookkeeping: points earned on `earned_day` (the program's local date).
    earned_day = models.DateField(null=True, blank=True)
    earned_today = points_field(default=0)
    purchase_count = models.PositiveIntegerField(default=0)
    last_purchase_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["program", "member_id"], name="balance_unique_member"),
            models.CheckConstraint(condition=Q(locked__gte=0), name="balance_locked_gte_0"),
            models.CheckConstraint(
                condition=Q(earned_today__gte=0), name="balance_earned_today_gte_0"
            ),
        ]
        # No index on last_activity_at: every earning, redemption and refund changes it, and an
        # indexed column changing forbids PostgreSQL's HOT update (the row's new version would
        # need a new entry in every index). Its one reader, the campaigns' `inactive` segment,
        # walks a program's members in id order in chunks: (program, id) serves that walk for
        # every segment, and neither column ever changes.
        indexes = [
            models.Index(fields=["program", "tier"]),
            models.Index(fields=["program", "id"], name="balance_program_walk"),
        ]
        triggers = [balance_never_deleted()]

    def __str__(self) -> str:
        return f"{self.member_id} @ {self.program_id}"

    @property
    def available(self):
        return self.points_balance - self.locked


class LedgerEntry(models.Model):
    """An immutable change of one balance. Never updated or deleted."""

    class Type(models.TextChoices):
        PURCHASE = "purchase"
        REFUND = "refund"
        REFERRAL = "referral"
        CAMPAIGN_BONUS = "campaign_bonus"
        MANUAL_ADJUST = "manual_adjust"
        REDEMPTION = "redemption"
        EXPIRY = "expiry"
        TIER_ROLLBACK = "tier_rollback"

    # Every entry is written once and read by the composite indexes in Meta, which also serve
    # these foreign keys: no single-column index of their own (each one is an insert per entry).
    # No foreign key constraints either: their checks ran at every commit (a query each), and
    # the one on `program` locked the program row (KEY SHARE), shared by every concurrent event
    # of the program, which cost a MultiXact each time. What they guaranteed holds without
    # them: programs and balances are never deleted (triggers), and every writer of an entry
    # holds its balance row FOR UPDATE (see docs/ARCHITECTURE.md, "The ledger").
    program = models.ForeignKey(
        Program,
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
        db_constraint=False,
    )
    balance = models.ForeignKey(
        MemberBalance,
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
        db_constraint=False,
    )
    type = models.CharField(max_length=20, choices=Type.choices)
    points = points_field()
    amount = money_field(null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    module = models.CharField(max_length=32, blank=True)
    reference = models.CharField(max_length=128, blank=True)
    # Set on few entries (refunds, redemptions): partial indexes in Meta, not one entry per row.
    original_entry = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="refunds",
        db_index=False,
    )
    redemption = models.ForeignKey(
        "Redemption",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
    )
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    balance_after = points_field()
    reason = models.CharField(max_length=500, blank=True)
    # What the points are made of (breakdown, SIRA score, caps, debt) so a replay of the
    # idempotency key answers exactly what the first call answered.
    details = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    actor_id = models.CharField(max_length=128)
    actor_role = models.CharField(max_length=32)
    occurred_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        # Immutable in the database itself, not only in the admin.
        triggers = [
            pgtrigger.Protect(
                name="ledger_entry_append_only", operation=pgtrigger.Update | pgtrigger.Delete
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["program", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="ledger_unique_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(fields=["balance", "-id"]),
            models.Index(fields=["program", "reference"]),
            # `created_at` has a BRIN index on PostgreSQL (migration 0013), for time ranges
            # (reports); no btree on (program, type, created_at): every writer of a program
            # inserted at its one rightmost leaf, a hot spot for a busy program.
            # `col = x` implies `col IS NOT NULL`: lookups and the foreign key checks use these.
            models.Index(
                fields=["original_entry"],
                condition=Q(original_entry__isnull=False),
                name="ledger_original_entry",
            ),
            models.Index(
                fields=["redemption"],
                condition=Q(redemption__isnull=False),
                name="ledger_redemption",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.points} ({self.pk})"


class PointLot(models.Model):
    """Points earned together, with one expiry date; consumed oldest first (FIFO)."""

    # Every lot is read through the partial indexes in Meta (open lots only, by member or by
    # program): no single-column index per foreign key (each one is an insert per earning).
    # Balances, programs and ledger entries are never deleted, so no foreign key check needs
    # them either; and no constraint, as on LedgerEntry: a lot is written in its entry's
    # statement, by a writer holding its balance row.
    balance = models.ForeignKey(
        MemberBalance,
        on_delete=models.PROTECT,
        related_name="lots",
        db_index=False,
        db_constraint=False,
    )
    program = models.ForeignKey(
        Program, on_delete=models.PROTECT, related_name="lots", db_index=False, db_constraint=False
    )
    entry = models.ForeignKey(
        LedgerEntry,
        on_delete=models.PROTECT,
        related_name="lots",
        db_index=False,
        db_constraint=False,
    )
    points = points_field()
    remaining = points_field()
    earned_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    expiry_warned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(remaining__gte=0) & Q(remaining__lte=models.F("points")),
                name="lot_remaining_in_range",
            ),
        ]
        indexes = [
            # Open lots of a member in FIFO order, and open lots due to expire.
            models.Index(
                fields=["balance", "id"], condition=Q(remaining__gt=0), name="lot_open_fifo"
            ),
            models.Index(
                fields=["program", "expires_at"],
                condition=Q(remaining__gt=0),
                name="lot_open_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"lot {self.pk}: {self.remaining}/{self.points}"


class Voucher(models.Model):
    class Type(models.TextChoices):
        DISCOUNT = "discount"
        WALLET_TOPUP = "wallet_topup"
        FREE_PRODUCT = "free_product"

    class Status(models.TextChoices):
        ACTIVE = "active"
        REDEEMED = "redeemed"
        EXPIRED = "expired"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    code = models.CharField(max_length=32, unique=True)
    program = models.ForeignKey(Program, on_delete=models.PROTECT, related_name="vouchers")
    balance = models.ForeignKey(MemberBalance, on_delete=models.PROTECT, related_name="vouchers")
    type = models.CharField(max_length=16, choices=Type.choices)
    value = money_field()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    expires_at = models.DateTimeField()
    redeemed_at = models.DateTimeField(null=True, blank=True)
    redeemed_by = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["active", "redeemed", "expired", "cancelled"]),
                name="voucher_status_valid",
            ),
            models.CheckConstraint(condition=Q(value__gte=0), name="voucher_value_gte_0"),
        ]

    def __str__(self) -> str:
        # The code is a bearer secret: where a voucher is named (the console, logs), by its
        # last four characters only.
        return f"{self.get_type_display()} voucher …{self.code[-4:]}"

    @property
    def current_status(self) -> str:
        """The status as of now: an active voucher past its date is expired, whether or not
        the hold-expiry job has swept it yet (redeeming it is refused either way)."""
        if self.status == self.Status.ACTIVE and self.expires_at <= timezone.now():
            return self.Status.EXPIRED
        return self.status

    @classmethod
    def current_status_q(cls, status: str) -> Q:
        """A filter on `current_status`: the vouchers whose status as of now is `status`."""
        now = timezone.now()
        if status == cls.Status.ACTIVE:
            return Q(status=status, expires_at__gt=now)
        if status == cls.Status.EXPIRED:
            return Q(status=status) | Q(status=cls.Status.ACTIVE, expires_at__lte=now)
        return Q(status=status)


class Redemption(models.Model):
    """A two-phase redemption: a hold of points (pending), then capture, release or expiry."""

    class Status(models.TextChoices):
        PENDING = "pending"
        COMPLETED = "completed"
        CANCELLED = "cancelled"
        EXPIRED = "expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(Program, on_delete=models.PROTECT, related_name="redemptions")
    balance = models.ForeignKey(MemberBalance, on_delete=models.PROTECT, related_name="redemptions")
    points = points_field()
    reward_type = models.CharField(max_length=16, choices=Voucher.Type.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    idempotency_key = models.CharField(max_length=255, blank=True, default="")
    expires_at = models.DateTimeField()
    # The voucher's value, fixed when the points are held (like a card authorisation's
    # amount): a point value changed before the capture does not reprice it. Null for the
    # holds made before the value was kept: their capture prices them then, and checks it.
    value = money_field(null=True, blank=True)
    voucher = models.OneToOneField(
        Voucher, null=True, blank=True, on_delete=models.PROTECT, related_name="redemption"
    )
    actor_id = models.CharField(max_length=128)
    actor_role = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["program", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="redemption_unique_idempotency_key",
            ),
            models.CheckConstraint(condition=Q(points__gt=0), name="redemption_points_gt_0"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "completed", "cancelled", "expired"]),
                name="redemption_status_valid",
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"],
                condition=Q(status="pending"),
                name="redemption_pending_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"redemption {self.pk} ({self.status})"


class TierSnapshot(models.Model):
    """One tier change of a member: who, when, from, to, why; rollback restores `from_tier`."""

    balance = models.ForeignKey(
        MemberBalance, on_delete=models.PROTECT, related_name="tier_snapshots"
    )
    program = models.ForeignKey(Program, on_delete=models.PROTECT, related_name="tier_snapshots")
    from_tier = models.CharField(max_length=32)
    to_tier = models.CharField(max_length=32)
    reason = models.CharField(max_length=200)
    points_balance = points_field()
    lifetime_spend = money_field()
    # The qualifying points or spend the decision was based on; a rollback records it too,
    # so the tier job does not re-apply a rolled-back upgrade until the member earns more.
    qualifying_value = models.DecimalField(max_digits=20, decimal_places=2, null=True, blank=True)
    # The basis `qualifying_value` is in (the program's then): a rollback's pin is compared in
    # it (`tiers._rollback_pins`). Blank: recorded before the basis was kept.
    qualifying_basis = models.CharField(
        max_length=8, choices=Program.TierBasis.choices, blank=True, default=""
    )
    actor_id = models.CharField(max_length=128)
    job = models.ForeignKey("Job", null=True, blank=True, on_delete=models.SET_NULL)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    rollback_of = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="rolled_back_by"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["balance", "-id"])]

    def __str__(self) -> str:
        return f"{self.balance_id}: {self.from_tier} -> {self.to_tier}"


class Campaign(models.Model):
    class Segment(models.TextChoices):
        INACTIVE = "inactive"
        AT_RISK = "at_risk"
        HIGH_VALUE = "high_value"
        TIER_BASIC = "tier_basic"
        TIER_SILVER = "tier_silver"
        TIER_GOLD = "tier_gold"
        TIER_PLATINUM = "tier_platinum"
        ALL = "all"

    class Status(models.TextChoices):
        DRAFT = "draft"
        SCHEDULED = "scheduled"
        RUNNING = "running"
        COMPLETED = "completed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    program = models.ForeignKey(Program, on_delete=models.PROTECT, related_name="campaigns")
    name = models.CharField(max_length=200)
    segment = models.CharField(max_length=16, choices=Segment.choices)
    bonus_points = points_field()
    scheduled_at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    awarded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    created_by = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When it first ran: its segment is the one as of then (campaigns._members_list).
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When its members were listed, a pending award each (campaigns._members_list): at its
    # start, or, for a campaign started before awards could be pending, at its next run.
    members_listed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(bonus_points__gt=0), name="campaign_bonus_points_gt_0"
            ),
        ]
        indexes = [models.Index(fields=["status", "scheduled_at"])]

    def __str__(self) -> str:
        return self.name


class CampaignAward(models.Model):
    """At most one award per member per campaign, whatever the number of runs or workers.
    Pending from the campaign's start (its segment as of then) until its chunk runs."""

    class Status(models.TextChoices):
        PENDING = "pending"
        AWARDED = "awarded"
        FAILED = "failed"

    campaign = models.ForeignKey(Campaign, on_delete=models.PROTECT, related_name="awards")
    # No foreign key constraint: its check, at the commit of a campaign's start, would lock
    # every listed balance (KEY SHARE) in the order rows were listed, against the id order of
    # every balance writer (a deadlock), and hold up their writes meanwhile. Balances are
    # never deleted (a trigger), which is what it guaranteed.
    balance = models.ForeignKey(
        MemberBalance, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    entry = models.ForeignKey(LedgerEntry, null=True, blank=True, on_delete=models.PROTECT)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.AWARDED)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "balance"], name="campaign_award_once"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "awarded", "failed"]),
                name="campaign_award_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}/{self.balance_id}: {self.status}"


class Job(models.Model):
    """One run of a background job: what, for whom, how far, and how it ended."""

    class Kind(models.TextChoices):
        TIER_EVALUATION = "tier_evaluation"
        POINT_EXPIRY = "point_expiry"
        CAMPAIGN_EXECUTION = "campaign_execution"
        HOLD_EXPIRY = "hold_expiry"
        APPROVAL_EXPIRY = "approval_expiry"
        CHURN_UPDATE = "churn_update"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    program = models.ForeignKey(Program, null=True, blank=True, on_delete=models.SET_NULL)
    merchant = models.ForeignKey(Merchant, null=True, blank=True, on_delete=models.SET_NULL)
    parameters = models.JSONField(default=dict, blank=True)
    # Two runs of the same job for the same program and day never overlap.
    run_key = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    triggered_by = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run_key"],
                condition=Q(status__in=["queued", "running"]) & ~Q(run_key=""),
                name="job_one_active_run",
            ),
        ]
        indexes = [models.Index(fields=["kind", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.status}"


class OutboxEvent(models.Model):
    """A business event written in the same transaction as the change it describes.

    Delivery to merchants' webhook endpoints reads from here, so no event is lost or phantom.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # By merchant: the admin's scoping. Never read by program (and programs are never
    # deleted): no index of its own, one insert less per event. No constraints, as
    # LedgerEntry.program: merchants and programs are never deleted (triggers), and their rows
    # are shared by every concurrent event, whose foreign key checks would all lock them.
    merchant = models.ForeignKey(
        Merchant, on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    program = models.ForeignKey(
        Program,
        null=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"],
                condition=Q(dispatched_at__isnull=True),
                name="outbox_undispatched",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.pk}"
