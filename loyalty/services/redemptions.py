"""Two-phase redemption, like a card authorisation: hold, then capture or release (or expiry).

A hold moves points from available to locked under the member's row lock, so concurrent holds
can never overdraw the balance. Lock order: balance row, then the redemption row.
"""

import secrets
from datetime import timedelta
from decimal import Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone

from audit.services import audit_record

from ..actors import Actor
from ..errors import (
    AccountFrozen,
    FraudReview,
    HoldExpired,
    IdempotencyKeyReused,
    InsufficientPoints,
    InvalidState,
    NotFound,
    OutstandingDebt,
    ProgramInactive,
    ValidationFailed,
    VoucherNotRedeemable,
)
from ..models import LedgerEntry, MemberBalance, OutboxEvent, Program, Redemption, Voucher
from ..money import fits_ledger, is_exact_points, money_floor
from .balances import balance_lock, has_blocking_flag, lots_consume
from .ingestion import balance_snapshot
from .jobs import audit_many
from .outbox import outbox_event, outbox_publish

VOUCHER_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O or 1/I look-alikes


def redemption_hold(**hold) -> Redemption:
    """Locks `points` of the member's available balance; never leaves available below zero.
    With `capture`, captures in the same transaction. The arguments of
    `redemption_hold_or_replay`."""
    return redemption_hold_or_replay(**hold)[0]


def redemption_hold_or_replay(
    *,
    program: Program,
    member_id: str,
    points: Decimal,
    reward_type: str,
    idempotency_key: str,
    actor: Actor,
    capture: bool = False,
) -> tuple[Redemption, bool]:
    """`redemption_hold`, and whether the redemption is the one the key already made (a
    repeat, answered as a replay) rather than made now."""
    if points is None or not fits_ledger(points) or points <= 0 or not is_exact_points(points):
        raise ValidationFailed(errors={"points": ["Positive points, at most 2 places."]})
    if reward_type not in Voucher.Type.values:
        raise ValidationFailed(errors={"reward_type": [f"One of {Voucher.Type.values}."]})
    existing = _redemption_for_key(
        program, idempotency_key, member_id, points, reward_type, capture
    )
    if existing:
        return existing, True
    try:
        return _hold_atomic(
            program=program,
            member_id=member_id,
            points=points,
            reward_type=reward_type,
            idempotency_key=idempotency_key,
            actor=actor,
            capture=capture,
        )
    except IntegrityError:
        existing = _redemption_for_key(
            program, idempotency_key, member_id, points, reward_type, capture
        )
        if existing:
            return existing, True
        raise


def _redemption_for_key(program, key, member_id, points, reward_type, capture) -> Redemption | None:
    """The redemption the key already made, or None; IdempotencyKeyReused when it was made
    by another request. A hold made with `capture` is completed at once: a repeat asking for
    the capture of a key whose hold was not is another request (it would get a pending hold
    back and no voucher)."""
    found = (
        Redemption.objects.select_related("balance", "voucher")
        .filter(program=program, idempotency_key=key)
        .first()
    )
    if found and (
        (found.balance.member_id, found.points, found.reward_type)
        != (member_id, points, reward_type)
        or (capture and found.status != Redemption.Status.COMPLETED)
    ):
        raise IdempotencyKeyReused(idempotency_key=key)
    return found


@transaction.atomic(durable=True)
def _hold_atomic(
    *, program, member_id, points, reward_type, idempotency_key, actor, capture
) -> tuple[Redemption, bool]:
    """The hold made now, or the one a concurrent request of the key committed while this
    one waited for the member's lock (True: a repeat)."""
    if program.status != Program.Status.ACTIVE:
        raise ProgramInactive(status=program.status)
    value = _voucher_price(points, program)
    if not _voucher_value_valid(value):
        # The voucher would be worth nothing (or more than can be stored): no points spent.
        raise ValidationFailed(
            errors={
                "points": [
                    f"{points} points make a voucher of {value} {program.currency} at the "
                    f"program's point value ({program.point_value}): not a voucher to issue."
                ]
            }
        )
    balance = balance_lock(program=program, member_id=member_id)
    if balance is None:
        raise NotFound("No such member in this program.", member_id=member_id)
    existing = _redemption_for_key(
        program, idempotency_key, member_id, points, reward_type, capture
    )
    if existing:
        return existing, True
    _refuse_redemption(program, balance)
    if balance.available < points:
        raise InsufficientPoints(available=str(balance.available), requested=str(points))
    balance.locked += points
    balance.last_activity_at = timezone.now()
    balance.save(update_fields=["locked", "last_activity_at", "updated_at"])
    redemption = Redemption.objects.create(
        program=program,
        balance=balance,
        points=points,
        reward_type=reward_type,
        idempotency_key=idempotency_key,
        value=value,
        expires_at=timezone.now() + timedelta(seconds=program.hold_ttl_seconds),
        actor_id=actor.id,
        actor_role=actor.role,
    )
    _audit(actor, "redemption.hold", redemption, program)
    if capture:
        _capture(redemption, balance, actor)
    return redemption, False


def _voucher_price(points, program: Program):
    """What `points` are worth at the program's point value, floored to its currency."""
    return money_floor(points * program.point_value, program.currency)


def _voucher_value_valid(value) -> bool:
    return value > 0 and fits_ledger(value)


def _voucher_value(redemption: Redemption, program: Program):
    """The value of the voucher a capture issues: the one fixed at the hold."""
    if redemption.value is not None:
        return redemption.value
    # A hold from before holds kept their value: priced now, at the program's point value.
    value = _voucher_price(redemption.points, program)
    if not _voucher_value_valid(value):
        raise InvalidState(
            f"At the program's point value ({program.point_value}) the hold's "
            f"{redemption.points} points make a voucher of {value} {program.currency}: "
            "release the hold.",
            status=redemption.status,
        )
    return value


def _refuse_redemption(program: Program, balance: MemberBalance) -> None:
    if balance.is_frozen:
        raise AccountFrozen(member_id=balance.member_id)
    if balance.points_balance < 0:
        raise OutstandingDebt(debt=str(-balance.points_balance))
    if program.fraud_detection_enabled and has_blocking_flag(balance):
        raise FraudReview(member_id=balance.member_id)


def _lock_redemption(redemption_id) -> tuple[Redemption, MemberBalance]:
    """Locks the member's balance, then the redemption (the fixed order)."""
    found = Redemption.objects.filter(pk=redemption_id).values_list("balance_id", flat=True)
    balance_id = found.first()
    if balance_id is None:
        raise NotFound("No such redemption.")
    # OF self: the balance row only. The program is read with it, not locked: locking it
    # would queue every capture and release of the program, and every insert naming it.
    balance = (
        MemberBalance.objects.select_for_update(of=("self",))
        .select_related("program")
        .get(pk=balance_id)
    )
    redemption = Redemption.objects.select_for_update().get(pk=redemption_id)
    return redemption, balance


@transaction.atomic(durable=True)
def redemption_capture(*, redemption_id, actor: Actor) -> Redemption:
    """Spends the held points and issues the voucher; a repeat returns the completed one."""
    redemption, balance = _lock_redemption(redemption_id)
    if redemption.status == Redemption.Status.COMPLETED:
        return redemption
    if redemption.status != Redemption.Status.PENDING:
        raise InvalidState(f"The redemption is {redemption.status}.", status=redemption.status)
    if redemption.expires_at <= timezone.now():
        raise HoldExpired(expired_at=redemption.expires_at.isoformat())
    if balance.program.status != Program.Status.ACTIVE:
        # A suspension between hold and capture stops the spend; release still unlocks.
        raise ProgramInactive(status=balance.program.status)
    _refuse_redemption(balance.program, balance)
    if balance.points_balance < redemption.points:
        raise InsufficientPoints(
            available=str(balance.points_balance), requested=str(redemption.points)
        )
    _capture(redemption, balance, actor)
    return redemption


def _capture(redemption: Redemption, balance: MemberBalance, actor: Actor) -> None:
    program = balance.program
    value = _voucher_value(redemption, program)  # before any change: it may refuse
    now = timezone.now()
    balance.points_balance -= redemption.points
    balance.locked -= redemption.points
    balance.lifetime_redeemed += redemption.points
    balance.last_activity_at = now
    consumed = lots_consume(balance=balance, points=redemption.points)
    assert consumed == redemption.points, "lots out of step with the balance"  # noqa: S101
    balance.save(
        update_fields=[
            "points_balance",
            "locked",
            "lifetime_redeemed",
            "last_activity_at",
            "updated_at",
        ]
    )
    voucher = Voucher.objects.create(
        code=voucher_code_generate(),
        program=program,
        balance=balance,
        type=redemption.reward_type,
        value=value,
        currency=program.currency,
        expires_at=now + timedelta(days=program.voucher_validity_days),
    )
    entry = LedgerEntry.objects.create(
        program=program,
        balance=balance,
        type=LedgerEntry.Type.REDEMPTION,
        points=-redemption.points,
        redemption=redemption,
        idempotency_key=f"redemption:{redemption.pk}",
        balance_after=balance.points_balance,
        reason=f"{redemption.reward_type} voucher",
        details={
            "member_id": balance.member_id,
            "balance": balance_snapshot(balance),
            # The voucher, not its code: a bearer secret, and the ledger keeps what it is
            # given for ever (the outbox and the audit trail carry its last four too).
            "voucher_id": str(voucher.pk),
            "voucher_code_last4": voucher.code[-4:],
        },
        actor_id=actor.id,
        actor_role=actor.role,
        occurred_at=now,
    )
    redemption.status = Redemption.Status.COMPLETED
    redemption.voucher = voucher
    redemption.finished_at = now
    redemption.save(update_fields=["status", "voucher", "finished_at"])
    _audit(actor, "redemption.capture", redemption, program)
    audit_record(
        actor=actor,
        action="voucher.generate",
        entity_type="voucher",
        entity_id=voucher.pk,
        merchant_id=program.merchant_id,
        after={"type": voucher.type, "value": str(voucher.value), "currency": voucher.currency},
    )
    payload = {
        "redemption_id": str(redemption.pk),
        "transaction_id": str(entry.pk),
        "member_id": balance.member_id,
        "points": str(redemption.points),
        "balance": balance_snapshot(balance),
    }
    outbox_publish(program=program, event_type="loyalty.points.redeemed", payload=payload)
    outbox_publish(
        program=program,
        event_type="loyalty.voucher.generated",
        payload={
            "voucher_id": str(voucher.pk),
            "member_id": balance.member_id,
            "type": voucher.type,
            "value": str(voucher.value),
            "currency": voucher.currency,
            "expires_at": voucher.expires_at.isoformat(),
        },
    )


@transaction.atomic(durable=True)
def redemption_release(*, redemption_id, actor: Actor) -> Redemption:
    """Unlocks the held points; a repeat returns the cancelled redemption."""
    redemption, balance = _lock_redemption(redemption_id)
    if redemption.status == Redemption.Status.CANCELLED:
        return redemption
    if redemption.status != Redemption.Status.PENDING:
        raise InvalidState(f"The redemption is {redemption.status}.", status=redemption.status)
    _unlock(redemption, balance, Redemption.Status.CANCELLED)
    _audit(actor, "redemption.release", redemption, balance.program)
    return redemption


def _unlock(redemption: Redemption, balance: MemberBalance, status: str) -> None:
    """Ends a hold without spending it (released, or expired), with its business event: the
    merchant learns that the held points are available again, also when no request of
    theirs ended it (the hold expiry job, an operator)."""
    balance.locked -= redemption.points
    balance.save(update_fields=["locked", "updated_at"])
    redemption.status = status
    redemption.finished_at = timezone.now()
    redemption.save(update_fields=["status", "finished_at"])
    released = status == Redemption.Status.CANCELLED
    outbox_publish(
        program=balance.program,
        event_type="loyalty.redemption.released" if released else "loyalty.redemption.expired",
        payload={
            "redemption_id": str(redemption.pk),
            "member_id": balance.member_id,
            "points": str(redemption.points),
            "status": redemption.status,
            "balance": balance_snapshot(balance),
        },
    )


@transaction.atomic(durable=True)
def redemption_expire(*, redemption_id, actor: Actor) -> bool:
    """Releases a hold past its time-to-live; False when it was already settled."""
    redemption, balance = _lock_redemption(redemption_id)
    if redemption.status != Redemption.Status.PENDING or redemption.expires_at > timezone.now():
        return False
    _unlock(redemption, balance, Redemption.Status.EXPIRED)
    _audit(actor, "redemption.expire", redemption, balance.program)
    return True


def redemptions_due():
    """Holds past their time-to-live, still pending."""
    return Redemption.objects.filter(
        status=Redemption.Status.PENDING, expires_at__lte=timezone.now()
    )


def redemptions_expire_due(*, actor: Actor, limit: int = 1000) -> int:
    """Expires up to `limit` holds past their TTL, one short transaction each."""
    due = redemptions_due().order_by("expires_at").values_list("pk", flat=True)[:limit]
    return sum(redemption_expire(redemption_id=pk, actor=actor) for pk in list(due))


def vouchers_expire_due(*, actor: Actor, limit: int = 1000) -> int:
    """Marks expired up to `limit` active vouchers past their date, in one transaction: each
    audited, with a `loyalty.voucher.expired` event. A redemption racing it cannot win: it
    needs the voucher active and not yet past its date (`voucher_redeem`)."""
    with transaction.atomic(durable=True):
        now = timezone.now()
        due = list(
            Voucher.objects.select_for_update(of=("self",), skip_locked=True)
            .select_related("program")
            .filter(status=Voucher.Status.ACTIVE, expires_at__lte=now)
            .order_by("expires_at")[:limit]
        )
        Voucher.objects.filter(pk__in=[v.pk for v in due]).update(status=Voucher.Status.EXPIRED)
        OutboxEvent.objects.bulk_create(
            [_voucher_event(v, "loyalty.voucher.expired") for v in due]
        )  # one insert, as the audit entries below
        by_merchant: dict[str, list] = {}
        for voucher in due:
            by_merchant.setdefault(voucher.program.merchant_id, []).append(voucher)
        for merchant_id, vouchers in by_merchant.items():  # one audit insert per merchant
            audit_many(
                actor=actor, action="voucher.expire", entity_type="voucher",
                merchant_id=merchant_id,
                rows=[(v.pk, {"status": Voucher.Status.EXPIRED}) for v in vouchers],
            )  # fmt: skip
    return len(due)


def _audit(actor: Actor, action: str, redemption: Redemption, program: Program) -> None:
    audit_record(
        actor=actor,
        action=action,
        entity_type="redemption",
        entity_id=redemption.pk,
        merchant_id=program.merchant_id,
        after={"status": redemption.status, "points": str(redemption.points)},
    )


def voucher_code_generate() -> str:
    """`MLY-XXXX-XXXX-XXXX`: 60 random bits, unguessable; unique in the database."""
    chars = "".join(secrets.choice(VOUCHER_ALPHABET) for _ in range(12))
    return f"MLY-{chars[:4]}-{chars[4:8]}-{chars[8:]}"


# Not durable: the API commits its answer's record with it (`idempotency_atomic`).
@transaction.atomic
def voucher_redeem(*, voucher: Voucher, actor: Actor) -> Voucher:
    """Marks an active voucher redeemed, exactly once: a conditional UPDATE on the voucher's
    own row decides the race. Like a capture, it is refused while the member's account is
    frozen or the program is not active (a freeze stops value leaving the account; the
    voucher stays active): the balance is locked first, as a capture and a freeze lock it."""
    now = timezone.now()
    balance = (
        MemberBalance.objects.select_for_update(of=("self",))
        .select_related("program")
        .get(pk=voucher.balance_id)
    )
    refusal = None
    if balance.program.status != Program.Status.ACTIVE:
        refusal = ProgramInactive(status=balance.program.status)
    elif balance.is_frozen:
        refusal = AccountFrozen(member_id=balance.member_id)
    won = refusal is None and Voucher.objects.filter(
        pk=voucher.pk, status=Voucher.Status.ACTIVE, expires_at__gt=now
    ).update(status=Voucher.Status.REDEEMED, redeemed_at=now, redeemed_by=actor.id)
    voucher.refresh_from_db()
    if not won:
        status = voucher.status
        if refusal is not None and status == Voucher.Status.ACTIVE and voucher.expires_at > now:
            raise refusal
        if status == Voucher.Status.ACTIVE:  # past its date but not yet swept
            status = Voucher.Status.EXPIRED
        raise VoucherNotRedeemable(f"The voucher is {status}.", status=status)
    audit_record(
        actor=actor,
        action="voucher.redeem",
        entity_type="voucher",
        entity_id=voucher.pk,
        merchant_id=voucher.program.merchant_id,
        after={"status": voucher.status},
    )
    _voucher_event(voucher, "loyalty.voucher.redeemed").save(force_insert=True)
    return voucher


def _voucher_event(voucher: Voucher, event_type: str) -> OutboxEvent:
    """A voucher's business event, not saved: never its whole code (a bearer secret until
    redeemed)."""
    return outbox_event(
        program=voucher.program,
        event_type=event_type,
        payload={
            "voucher_id": str(voucher.pk),
            "code_last4": voucher.code[-4:],
            "value": str(voucher.value),
            "currency": voucher.currency,
            "expires_at": voucher.expires_at.isoformat(),
        },
    )
