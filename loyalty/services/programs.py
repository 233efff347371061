"""Programs and their tiers; member freeze. Every write is audited in its own transaction."""

import copy
import itertools
import zoneinfo
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from sira.scoring import sira_settings_resolve

from ..actors import Actor
from ..errors import InvalidState, NotFound, ValidationFailed
from ..models import MemberBalance, Merchant, Program, Tier, validate_timezone
from ..money import CURRENCY_EXPONENTS, is_exact_money, money_quantum
from .balances import balance_lock
from .budget import budget_set_limit, budget_shards_create
from .tiers import tiers_locked

DEFAULT_TIERS = [
    {"name": "basic", "min_points": Decimal("0")},
    {"name": "silver", "min_points": Decimal("1000")},
    {"name": "gold", "min_points": Decimal("5000")},
    {"name": "platinum", "min_points": Decimal("20000")},
]

# Fields a program update may change (budget_limit has its own path: it re-spreads shards).
UPDATABLE_FIELDS = {
    "name", "timezone", "earn_rate", "point_value", "expiry_days", "expiry_rounding",
    "expiry_warning_days", "budget_limit", "max_earn_per_day", "fraud_detection_enabled",
    "refund_policy", "tier_basis", "tier_downgrade_policy", "tier_qualifying_days",
    "tier_cycle_date", "sira_settings", "hold_ttl_seconds", "voucher_validity_days",
}  # fmt: skip


@dataclass(frozen=True)
class TierInput:
    name: str
    min_points: Decimal = Decimal(0)
    min_spend: Decimal = Decimal(0)
    earn_multiplier: Decimal = Decimal(1)


def program_snapshot(program: Program) -> dict:
    return {
        field: (str(value) if value is not None and not isinstance(value, bool | dict) else value)
        for field in sorted(UPDATABLE_FIELDS | {"status", "currency"})
        for value in [getattr(program, field)]
    }


# Not durable: the API commits its answer's record with it (`idempotency_atomic`).
@transaction.atomic
def program_create(
    *,
    merchant_id: str,
    name: str,
    currency: str,
    actor: Actor,
    tiers: list[TierInput] | None = None,
    **fields,
) -> Program:
    """Creates a program (and its merchant on first use), its tiers and budget shards."""
    program = program_create_check(name=name, currency=currency, tiers=tiers, **fields)
    merchant, _ = Merchant.objects.get_or_create(id=merchant_id)
    program.merchant = merchant
    program.save()
    _tiers_replace(program, tiers or default_tiers())
    budget_shards_create(program=program)
    audit_record(
        actor=actor,
        action="program.create",
        entity_type="program",
        entity_id=program.pk,
        merchant_id=merchant.pk,
        after={**program_snapshot(program), "tiers": _tiers_snapshot(program)},
    )
    return program


def program_create_check(
    *, name: str, currency: str, tiers: list[TierInput] | None = None, **fields
) -> Program:
    """The program `program_create` would make, in memory (no merchant yet), or what it
    would refuse (ValidationFailed): forms ask first, to show it against their fields."""
    if currency not in CURRENCY_EXPONENTS:
        raise ValidationFailed(errors={"currency": [f"Unsupported currency {currency!r}."]})
    unknown = set(fields) - UPDATABLE_FIELDS
    if unknown:
        raise ValidationFailed(errors={f: ["Unknown field."] for f in unknown})
    program = Program(name=name, currency=currency, **fields)
    _full_clean(program)
    tier_cycle_date_check(program.tier_cycle_date, zone=program.timezone)
    _tiers_ordered(tiers or default_tiers(), program.tier_basis)
    return program


def default_tiers() -> list[TierInput]:
    return [TierInput(**t) for t in DEFAULT_TIERS]


def _full_clean(program: Program) -> None:
    try:
        program.full_clean(exclude=["merchant"])
    except ValidationError as exc:
        raise ValidationFailed(errors=exc.message_dict) from exc
    budget_limit_check(program.budget_limit, program.currency)
    try:
        # Checked here, not at ingestion: a bad setting would otherwise fail every purchase.
        sira_settings_resolve(program.sira_settings)
    except (ValueError, TypeError) as exc:
        raise ValidationFailed(errors={"sira_settings": [str(exc)]}) from exc


def _program_lock(program_id) -> Program:
    """The program row, locked against other changes of it until commit. FOR NO KEY UPDATE,
    not FOR UPDATE: a new member's balance checks its program at commit (the foreign key's
    FOR KEY SHARE), which FOR UPDATE would make wait; a limit change, which holds the program
    and then waits for the budget shards that such an event holds, then deadlocked with it
    (8 threads of purchases, refunds and limit changes: 38 deadlocks in 20 s, none since)."""
    program = Program.objects.select_for_update(no_key=True).filter(pk=program_id).first()
    if program is None:
        raise NotFound("No such program.")
    return program


def budget_limit_check(limit: Decimal | None, currency: str) -> None:
    """A budget is money of the program's currency: no more places than its minor unit (a
    limit of 100.50 XOF, which has none, could never be spent to the letter)."""
    if limit is not None and not is_exact_money(limit, currency):
        places = -money_quantum(currency).as_tuple().exponent
        raise ValidationFailed(
            errors={"budget_limit": [f"At most {places} decimal places in {currency}."]}
        )


def tier_cycle_date_check(value: date | None, *, zone: str, stored: date | None = None) -> None:
    """A tier cycle date being set is the program's local today or later: the review runs
    once on it, and a date in the past would review (and may take members down) at the next
    run, on a day nobody chose. Null (no review) is fine, and so is the date already stored,
    sent back unchanged (a program read with GET and PATCHed back): the review moves it on."""
    if value is None or value == stored:
        return
    try:
        validate_timezone(zone)
    except ValidationError:
        return  # the time zone's own error is reported by full_clean
    today = timezone.localdate(timezone=zoneinfo.ZoneInfo(zone))
    if value < today:
        raise ValidationFailed(
            errors={
                "tier_cycle_date": [
                    f"Must be today ({today.isoformat()} in {zone}) or later: the day of "
                    "the next tier review."
                ]
            }
        )


def tier_order(basis: str) -> tuple[str, str]:
    """The thresholds that order a program's tiers, lowest first: its basis's, then the
    other."""
    if basis == Program.TierBasis.SPEND:
        return "min_spend", "min_points"
    return "min_points", "min_spend"


def _tiers_ordered(tiers: list[TierInput], basis: str) -> list[TierInput]:
    """The tiers from the lowest, or ValidationFailed for a set a program of `basis` cannot
    have: each tier's threshold on the basis (points or spend) must be above the one below
    it, or the tier job would put every member who reaches one on the highest of them (with
    spend thresholds all 0, every member would be the top tier)."""
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ValidationFailed(errors={"tiers": ["Tier names must be unique."]})
    field, other = tier_order(basis)
    ordered = sorted(tiers, key=lambda t: (getattr(t, field), getattr(t, other)))
    if ordered[0].min_points != 0 or ordered[0].min_spend != 0:
        raise ValidationFailed(errors={"tiers": ["The first tier must start at zero."]})
    thresholds = [getattr(t, field) for t in ordered]
    if any(upper <= lower for lower, upper in itertools.pairwise(thresholds)):
        raise ValidationFailed(
            errors={
                "tiers": [
                    f"Each tier's {field} must be above the tier's below it: the program's "
                    f"tiers are by {basis}."
                ]
            }
        )
    return ordered


def _stored_tiers_fit(program: Program) -> None:
    """The program's tiers, as stored, checked against its (new) basis."""
    stored = Tier.objects.filter(program=program).order_by("rank")
    tiers = [TierInput(t.name, t.min_points, t.min_spend, t.earn_multiplier) for t in stored]
    if tiers and [t.name for t in _tiers_ordered(tiers, program.tier_basis)] != [
        t.name for t in tiers
    ]:
        raise ValidationFailed(
            errors={"tiers": [f"The tiers do not rise by {program.tier_basis}: send new ones."]}
        )


def _tiers_in_use_kept(program: Program, tiers: list[TierInput]) -> None:
    """Refuses new tiers that drop (or rename) a tier members are on: they would sit on a
    tier the program no longer has, earning at no multiplier, until the tier job moved them
    as if upgraded. Nothing moves members between tiers by hand: such a tier is kept."""
    kept = {t.name for t in tiers}
    dropped = set(Tier.objects.filter(program=program).values_list("name", flat=True)) - kept
    in_use = sorted(
        MemberBalance.objects.filter(program=program, tier__in=dropped)
        .values_list("tier", flat=True)
        .distinct()
    )
    if in_use:
        message = (
            f"Members are on {', '.join(in_use)}: a tier members are on cannot be dropped or "
            "renamed (its thresholds and multiplier can change)."
        )
        raise ValidationFailed(errors={"tiers": [message]})


def _tiers_snapshot(program: Program) -> list[dict]:
    """The program's tiers as the audit trail records them, in rank order."""
    return [
        {"name": name, "min_points": str(points), "min_spend": str(spend),
         "earn_multiplier": str(multiplier)}
        for name, points, spend, multiplier in Tier.objects.filter(program=program)
        .order_by("rank")
        .values_list("name", "min_points", "min_spend", "earn_multiplier")
    ]  # fmt: skip


def _tiers_replace(program: Program, tiers: list[TierInput]) -> None:
    ordered = _tiers_ordered(tiers, program.tier_basis)
    Tier.objects.filter(program=program).delete()
    Tier.objects.bulk_create(
        Tier(
            program=program,
            rank=rank,
            name=t.name,
            min_points=t.min_points,
            min_spend=t.min_spend,
            earn_multiplier=t.earn_multiplier,
        )
        for rank, t in enumerate(ordered)
    )


def program_update_check(
    *, program: Program, changes: dict, tiers: list[TierInput] | None = None
) -> Program:
    """Raises what `program_update` would refuse of `changes` to `program`, writing nothing
    and leaving `program` as it was; else returns a copy with the changes, as the model's
    fields clean them (a budget sent as text read as a Decimal). Callers that gate a change
    behind an approval ask this first, so no request is filed for a change the service
    would refuse."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise ValidationFailed(errors={f: ["This field cannot be changed."] for f in unknown})
    candidate = copy.copy(program)
    for field, value in changes.items():
        setattr(candidate, field, value)
    _full_clean(candidate)
    tier_cycle_date_check(
        candidate.tier_cycle_date, zone=candidate.timezone, stored=program.tier_cycle_date
    )
    if tiers:
        _tiers_ordered(tiers, candidate.tier_basis)
        _tiers_in_use_kept(program, tiers)
    elif candidate.tier_basis != program.tier_basis:  # (sent back unchanged: not checked)
        _stored_tiers_fit(candidate)
    return candidate


@transaction.atomic(durable=True)
def program_update(
    *, program_id, changes: dict, actor: Actor, tiers: list[TierInput] | None = None
) -> Program:
    """Applies `changes` to the program; a new budget limit is re-spread over the shards."""
    program = _program_lock(program_id)
    if tiers:
        # Locked before the check of who is on them: a tier job or rollback moving members
        # onto one of them (which locks them too) has committed, and is seen, or waits.
        tiers_locked(program)
    before = program_snapshot(program)
    checked = program_update_check(program=program, changes=changes, tiers=tiers)
    for field in changes:  # the values as checked and cleaned, on the locked row
        setattr(program, field, getattr(checked, field))
    program.save(update_fields=[*changes, "updated_at"])
    if "budget_limit" in changes:
        budget_set_limit(program=program, limit=program.budget_limit)
    after = program_snapshot(program)
    if tiers:  # thresholds and multipliers decide what members earn: recorded like fields
        before["tiers"] = _tiers_snapshot(program)
        _tiers_replace(program, tiers)
        after["tiers"] = _tiers_snapshot(program)
    audit_record(
        actor=actor,
        action="program.update",
        entity_type="program",
        entity_id=program.pk,
        merchant_id=program.merchant_id,
        before=before,
        after=after,
    )
    return program


def program_status_check(*, program: Program, status: str) -> bool:
    """True when `status` would change the program, False when it is already there; raises
    when the change is refused: `closed` is final. Callers that gate a change behind an
    approval ask this first, so no request is filed for a change the service would refuse."""
    if status not in Program.Status.values:
        raise ValidationFailed(errors={"status": [f"One of {Program.Status.values}."]})
    if program.status == status:
        return False
    if program.status == Program.Status.CLOSED:
        raise InvalidState(f"The program is {program.status}.", status=program.status)
    return True


@transaction.atomic(durable=True)
def program_set_status(*, program_id, status: str, actor: Actor, reason: str = "") -> Program:
    """Suspends, reactivates or closes a program; a closed program stays closed, and a
    program already in `status` is returned unchanged (nothing written, nothing audited)."""
    program = _program_lock(program_id)
    if not program_status_check(program=program, status=status):
        return program
    before = program.status
    program.status = status
    program.save(update_fields=["status", "updated_at"])
    audit_record(
        actor=actor,
        action=f"program.status.{status}",
        entity_type="program",
        entity_id=program.pk,
        merchant_id=program.merchant_id,
        before={"status": before},
        after={"status": status, "reason": reason},
    )
    return program


@transaction.atomic(durable=True)
def balance_set_frozen(
    *, program: Program, member_id: str, frozen: bool, actor: Actor, reason: str = ""
) -> MemberBalance:
    """Freezes (or unfreezes) a member: a frozen member earns and redeems nothing."""
    balance = balance_lock(program=program, member_id=member_id)
    if balance is None:
        raise NotFound("No such member in this program.", member_id=member_id)
    before = balance.is_frozen
    if before == frozen:
        return balance  # already so: nothing written, nothing audited
    balance.is_frozen = frozen
    balance.save(update_fields=["is_frozen", "updated_at"])
    audit_record(
        actor=actor,
        action="balance.freeze" if frozen else "balance.unfreeze",
        entity_type="balance",
        entity_id=balance.pk,
        merchant_id=program.merchant_id,
        before={"is_frozen": before},
        after={"is_frozen": frozen, "reason": reason},
    )
    return balance
