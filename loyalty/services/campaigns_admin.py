"""Campaign set-up: create and edit campaigns before they run (execution: campaigns.py)."""

from datetime import datetime, timedelta
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from audit.services import audit_record

from ..actors import Actor
from ..errors import InvalidState, NotFound, ProgramInactive, ValidationFailed
from ..models import Campaign, Program, Tier
from ..money import is_exact_points

# Statuses a client may set; running/completed belong to the execution job.
SETTABLE_STATUSES = {Campaign.Status.DRAFT, Campaign.Status.SCHEDULED, Campaign.Status.CANCELLED}
EDITABLE_STATUSES = {Campaign.Status.DRAFT, Campaign.Status.SCHEDULED}
UPDATABLE_FIELDS = {"name", "segment", "bonus_points", "scheduled_at", "status"}
# A bonus is paid to up to 2,000 members a chunk, charged to the budget at the point value as
# one sum: kept far below what the ledger's columns hold (10^18).
MAX_BONUS_POINTS = Decimal(10) ** 9


def campaign_snapshot(campaign: Campaign) -> dict:
    return {
        "name": campaign.name,
        "segment": campaign.segment,
        "bonus_points": str(campaign.bonus_points),
        "scheduled_at": campaign.scheduled_at.isoformat(),
        "status": campaign.status,
    }


# How far in the past a campaign may be scheduled (a client's clock, a form filled a moment
# ago): it runs at the job's next run. Further back is a mistyped date, which would pay the
# whole segment within the hour.
SCHEDULE_GRACE = timedelta(minutes=10)


def _segment_check(program: Program, segment: str) -> None:
    """A tier segment names one of the program's tiers (it would pay no one)."""
    tier = segment.removeprefix("tier_") if segment.startswith("tier_") else None
    if tier is not None and not Tier.objects.filter(program=program, name=tier).exists():
        raise ValidationFailed(
            errors={"segment": [f"The program has no tier named {tier!r}: it would pay no one."]}
        )


def _schedule_check(campaign_status: str, scheduled_at: datetime) -> None:
    if campaign_status == Campaign.Status.SCHEDULED and (
        scheduled_at < timezone.now() - SCHEDULE_GRACE
    ):
        raise ValidationFailed(
            errors={
                "scheduled_at": [
                    "In the past: a scheduled campaign pays at the next run after this time. "
                    "Send the current time to run it at the next run."
                ]
            }
        )


def _validate(fields: dict) -> None:
    errors: dict[str, list[str]] = {}
    points = fields.get("bonus_points")
    if "bonus_points" in fields and (
        not isinstance(points, Decimal) or points <= 0 or not is_exact_points(points)
    ):
        errors["bonus_points"] = ["Positive points with at most 2 decimal places."]
    elif "bonus_points" in fields and points > MAX_BONUS_POINTS:
        errors["bonus_points"] = [f"At most {MAX_BONUS_POINTS:,} points a member."]
    if "segment" in fields and fields["segment"] not in Campaign.Segment.values:
        errors["segment"] = [f"One of {Campaign.Segment.values}."]
    if "status" in fields and fields["status"] not in SETTABLE_STATUSES:
        errors["status"] = [f"One of {sorted(SETTABLE_STATUSES)}."]
    if "scheduled_at" in fields and (
        not isinstance(fields["scheduled_at"], datetime) or fields["scheduled_at"].tzinfo is None
    ):
        errors["scheduled_at"] = ["An aware datetime."]
    if "name" in fields and not (fields["name"] or "").strip():
        errors["name"] = ["This field is required."]
    if errors:
        raise ValidationFailed("The campaign is invalid.", errors=errors)


# Not durable: the API commits its answer's record with it (`idempotency_atomic`).
@transaction.atomic
def campaign_create(
    *,
    program: Program,
    name: str,
    segment: str,
    bonus_points: Decimal,
    scheduled_at: datetime,
    actor: Actor,
    status: str = Campaign.Status.SCHEDULED,
) -> Campaign:
    """Creates a draft or scheduled campaign of an open program."""
    fields = {
        "name": name,
        "segment": segment,
        "bonus_points": bonus_points,
        "scheduled_at": scheduled_at,
        "status": status,
    }
    _validate(fields)
    if status == Campaign.Status.CANCELLED:
        raise ValidationFailed(errors={"status": ["A new campaign is draft or scheduled."]})
    if program.status == Program.Status.CLOSED:
        raise ProgramInactive(status=program.status)
    _segment_check(program, segment)
    _schedule_check(status, scheduled_at)
    campaign = Campaign.objects.create(program=program, created_by=actor.id, **fields)
    audit_record(
        actor=actor,
        action="campaign.create",
        entity_type="campaign",
        entity_id=campaign.pk,
        merchant_id=program.merchant_id,
        after=campaign_snapshot(campaign),
    )
    return campaign


@transaction.atomic(durable=True)
def campaign_update(*, campaign_id, changes: dict, actor: Actor) -> Campaign:
    """Edits a campaign that has not started; the row lock orders it with the execution job."""
    unknown = set(changes) - UPDATABLE_FIELDS
    if unknown:
        raise ValidationFailed(errors={f: ["This field cannot be changed."] for f in unknown})
    _validate(changes)
    campaign = (
        Campaign.objects.select_for_update().select_related("program").filter(pk=campaign_id)
    ).first()
    if campaign is None:
        raise NotFound("No such campaign.")
    if campaign.status not in EDITABLE_STATUSES:
        raise InvalidState(f"The campaign is {campaign.status}.", status=campaign.status)
    cancel_only = changes == {"status": Campaign.Status.CANCELLED}
    if campaign.program.status == Program.Status.CLOSED and not cancel_only:
        # As campaign_create refuses it; a closed program's campaigns never run (the job runs
        # active programs'), so cancelling one is what is left to do with it.
        raise ProgramInactive(status=campaign.program.status)
    if "segment" in changes:
        _segment_check(campaign.program, changes["segment"])
    if {"status", "scheduled_at"} & set(changes):
        _schedule_check(
            changes.get("status", campaign.status),
            changes.get("scheduled_at", campaign.scheduled_at),
        )
    before = campaign_snapshot(campaign)
    for field, value in changes.items():
        setattr(campaign, field, value)
    campaign.save(update_fields=[*changes, "updated_at"])
    audit_record(
        actor=actor,
        action="campaign.update",
        entity_type="campaign",
        entity_id=campaign.pk,
        merchant_id=campaign.program.merchant_id,
        before=before,
        after=campaign_snapshot(campaign),
    )
    return campaign
