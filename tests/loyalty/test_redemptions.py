"""Two-phase redemption (hold, capture, release, TTL expiry) and exactly-once vouchers."""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from audit.models import AuditEntry
from loyalty.actors import Actor
from loyalty.errors import (
    AccountFrozen,
    HoldExpired,
    IdempotencyKeyReused,
    InsufficientPoints,
    InvalidState,
    NotFound,
    ProgramInactive,
    ValidationFailed,
    VoucherNotRedeemable,
)
from loyalty.models import LedgerEntry, OutboxEvent, Redemption, Voucher
from loyalty.money import money_floor
from loyalty.services import (
    balance_set_frozen,
    program_set_status,
    program_update,
    redemption_capture,
    redemption_release,
    redemptions_expire_due,
    voucher_redeem,
)
from loyalty.verify import ledger_verify
from tests.conftest import hold

from .conftest import balance_of, db_state

pytestmark = pytest.mark.django_db

D = Decimal
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CASHIER = Actor(id="pos-7", role="system")


@pytest.fixture
def funded(program, purchase):
    purchase(program, amount="10000")  # 200 points
    return program


def test_hold_moves_points_from_available_to_locked(funded, actor):
    with time_machine.travel(T0, tick=False):
        redemption = hold(funded, "150", actor)

    assert redemption.status == "pending"
    assert redemption.expires_at == T0 + timedelta(seconds=900)
    balance = balance_of(funded)
    assert (balance.points_balance, balance.locked, balance.available) == (
        D("200.00"),
        D("150.00"),
        D("50.00"),
    )
    # A hold moves no points: no ledger entry, the lots are untouched.
    assert LedgerEntry.objects.filter(type="redemption").count() == 0
    assert AuditEntry.objects.filter(
        action="redemption.hold", entity_id=str(redemption.pk)
    ).exists()
    assert ledger_verify() == []


def test_hold_beyond_available_is_refused_and_changes_nothing(funded, actor):
    hold(funded, "150", actor, key="h1")
    before = db_state()

    with pytest.raises(InsufficientPoints) as exc:
        hold(funded, "50.01", actor, key="h2")

    assert exc.value.code == "insufficient_points"
    assert db_state() == before
    assert hold(funded, "50", actor, key="h3").status == "pending"
    assert balance_of(funded).available == D("0.00")


def test_hold_replay_returns_the_same_hold_and_key_reuse_is_refused(funded, actor):
    first = hold(funded, "100", actor, key="h1")
    before = db_state()

    again = hold(funded, "100", actor, key="h1")
    assert again.pk == first.pk
    assert db_state() == before

    with pytest.raises(IdempotencyKeyReused):
        hold(funded, "99", actor, key="h1")
    assert db_state() == before


@pytest.mark.parametrize(
    ("points", "reward_type"),
    [
        ("0", "discount"),
        ("1.001", "discount"),
        ("10", "cash"),
        ("NaN", "discount"),
        ("1E+18", "discount"),
    ],
)
def test_invalid_hold_is_refused(funded, actor, points, reward_type):
    before = db_state()
    with pytest.raises(ValidationFailed):
        hold(funded, points, actor, reward_type=reward_type)
    assert db_state() == before


def test_hold_for_an_unknown_member_is_not_found(funded, actor):
    with pytest.raises(NotFound):
        hold(funded, "1", actor, member_id="nobody")


def test_frozen_member_and_inactive_program_cannot_hold(funded, actor):
    balance_set_frozen(program=funded, member_id="u_1", frozen=True, actor=actor)
    before = db_state()
    with pytest.raises(AccountFrozen):
        hold(funded, "10", actor)
    assert db_state() == before

    balance_set_frozen(program=funded, member_id="u_1", frozen=False, actor=actor)
    program_set_status(program_id=funded.pk, status="suspended", actor=actor)
    funded.refresh_from_db()
    before = db_state()
    with pytest.raises(ProgramInactive):
        hold(funded, "10", actor)
    assert db_state() == before


def test_capture_spends_the_points_and_issues_a_voucher(funded, actor):
    redemption = hold(funded, "150", actor)

    with time_machine.travel(T0, tick=False):
        captured = redemption_capture(redemption_id=redemption.pk, actor=CASHIER)

    assert captured.status == "completed"
    balance = balance_of(funded)
    assert (balance.points_balance, balance.locked) == (D("50.00"), D("0.00"))
    assert balance.lifetime_redeemed == D("150.00")
    entry = LedgerEntry.objects.get(type="redemption")
    assert entry.points == D("-150.00")
    assert entry.redemption_id == redemption.pk
    assert entry.balance_after == D("50.00")
    voucher = captured.voucher
    assert re.fullmatch(r"MLY-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}-[A-HJ-NP-Z2-9]{4}", voucher.code)
    assert (voucher.type, voucher.value, voucher.currency, voucher.status) == (
        "discount",
        D("150"),
        "XOF",
        "active",
    )
    assert voucher.expires_at == T0 + timedelta(days=90)
    events = set(OutboxEvent.objects.values_list("event_type", flat=True))
    assert {"loyalty.points.redeemed", "loyalty.voucher.generated"} <= events
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"redemption.capture", "voucher.generate"} <= actions
    assert ledger_verify() == []


def test_capture_repeat_returns_the_completed_redemption_without_a_second_voucher(funded, actor):
    redemption = hold(funded, "150", actor)
    first = redemption_capture(redemption_id=redemption.pk, actor=actor)
    before = db_state()

    again = redemption_capture(redemption_id=redemption.pk, actor=actor)

    assert again.voucher_id == first.voucher_id
    assert db_state() == before


def test_hold_and_capture_in_one_call(funded, actor):
    redemption = hold(funded, "200", actor, capture=True)
    assert redemption.status == "completed"
    assert redemption.voucher.value == D("200")
    assert balance_of(funded).points_balance == D("0.00")
    assert ledger_verify() == []


def test_a_repeat_asking_for_the_capture_of_a_key_whose_hold_was_not_is_a_reuse(funded, actor):
    """A hold made with capture is completed at once: the same key asking for the capture of
    a pending hold is another request, not its repeat (it would get no voucher back)."""
    pending = hold(funded, "100", actor, key="k-pending")
    before = db_state()
    with pytest.raises(IdempotencyKeyReused):
        hold(funded, "100", actor, key="k-pending", capture=True)
    assert db_state() == before
    assert hold(funded, "100", actor, key="k-pending").pk == pending.pk  # its own repeat
    captured = hold(funded, "50", actor, key="k-captured", capture=True)
    assert hold(funded, "50", actor, key="k-captured", capture=True).pk == captured.pk
    assert hold(funded, "50", actor, key="k-captured").pk == captured.pk
    assert ledger_verify() == []


@pytest.mark.parametrize(
    ("currency", "point_value", "points", "value"),
    [
        ("USD", "0.013", "333.33", "4.33"),  # 4.33329 floored to the cent
        ("XOF", "0.5", "333.33", "166"),  # 166.665 floored to the franc
        ("XOF", "3", "0.34", "1"),  # 1.02 XOF floored to the franc
    ],
)
def test_voucher_value_is_points_times_point_value_floored_to_the_currency(
    make_program, award, actor, currency, point_value, points, value
):
    program = make_program(currency=currency, point_value=D(point_value))
    award(program, points, member_id="u_1")

    redemption = hold(program, points, actor, capture=True)

    assert redemption.voucher.value == D(value)
    assert redemption.voucher.currency == currency


def test_release_unlocks_and_capture_after_release_is_refused(funded, actor):
    redemption = hold(funded, "150", actor)

    released = redemption_release(redemption_id=redemption.pk, actor=actor)

    assert released.status == "cancelled"
    assert balance_of(funded).locked == D("0.00")
    assert balance_of(funded).available == D("200.00")
    assert redemption_release(redemption_id=redemption.pk, actor=actor).status == "cancelled"
    before = db_state()
    with pytest.raises(InvalidState):
        redemption_capture(redemption_id=redemption.pk, actor=actor)
    assert db_state() == before
    assert ledger_verify() == []


def test_release_of_a_completed_redemption_is_refused(funded, actor):
    redemption = hold(funded, "150", actor, capture=True)
    with pytest.raises(InvalidState):
        redemption_release(redemption_id=redemption.pk, actor=actor)
    assert balance_of(funded).points_balance == D("50.00")


def test_capture_after_the_ttl_is_refused_and_the_sweep_expires_the_hold(funded, actor):
    with time_machine.travel(T0, tick=False):
        redemption = hold(funded, "150", actor)
    with time_machine.travel(T0 + timedelta(seconds=899), tick=False):
        assert redemptions_expire_due(actor=actor) == 0  # not due yet

    with time_machine.travel(T0 + timedelta(seconds=900), tick=False):
        before = db_state()
        with pytest.raises(HoldExpired) as exc:
            redemption_capture(redemption_id=redemption.pk, actor=actor)
        assert exc.value.code == "hold_expired"
        assert db_state() == before

        assert redemptions_expire_due(actor=actor) == 1
        assert redemptions_expire_due(actor=actor) == 0  # exactly once

    redemption.refresh_from_db()
    assert redemption.status == "expired"
    balance = balance_of(funded)
    assert (balance.points_balance, balance.locked) == (D("200.00"), D("0.00"))
    assert AuditEntry.objects.filter(action="redemption.expire").count() == 1
    with pytest.raises(InvalidState):
        redemption_capture(redemption_id=redemption.pk, actor=actor)
    assert ledger_verify() == []


def test_capture_within_the_ttl_succeeds(funded, actor):
    with time_machine.travel(T0, tick=False):
        redemption = hold(funded, "150", actor)
    with time_machine.travel(T0 + timedelta(seconds=899), tick=False):
        assert redemption_capture(redemption_id=redemption.pk, actor=actor).status == "completed"


def test_capture_refused_when_the_member_was_frozen_after_the_hold(funded, actor):
    redemption = hold(funded, "150", actor)
    balance_set_frozen(program=funded, member_id="u_1", frozen=True, actor=actor)
    before = db_state()
    with pytest.raises(AccountFrozen):
        redemption_capture(redemption_id=redemption.pk, actor=actor)
    assert db_state() == before


def test_voucher_redeems_exactly_once(funded, actor):
    voucher = hold(funded, "150", actor, capture=True).voucher

    redeemed = voucher_redeem(voucher=voucher, actor=CASHIER)

    assert redeemed.status == "redeemed"
    assert redeemed.redeemed_by == "pos-7"
    assert AuditEntry.objects.filter(action="voucher.redeem").count() == 1
    before = db_state()
    with pytest.raises(VoucherNotRedeemable) as exc:
        voucher_redeem(voucher=Voucher.objects.get(pk=voucher.pk), actor=CASHIER)
    assert exc.value.code == "voucher_not_redeemable"
    assert exc.value.context == {"status": "redeemed"}
    assert db_state() == before


def test_expired_voucher_is_not_redeemable(funded, actor):
    with time_machine.travel(T0, tick=False):
        voucher = hold(funded, "150", actor, capture=True).voucher
    with (
        time_machine.travel(T0 + timedelta(days=90), tick=False),
        pytest.raises(VoucherNotRedeemable) as exc,
    ):
        voucher_redeem(voucher=voucher, actor=CASHIER)
    assert exc.value.context == {"status": "expired"}
    assert Voucher.objects.get(pk=voucher.pk).status == "active"  # the sweep marks it later


@pytest.mark.parametrize("status", ["suspended", "closed"])
def test_capture_refused_once_the_program_is_inactive_but_release_still_unlocks(
    funded, actor, status
):
    redemption = hold(funded, "150", actor)
    program_set_status(program_id=funded.pk, status=status, actor=actor)
    before = db_state()

    with pytest.raises(ProgramInactive):
        redemption_capture(redemption_id=redemption.pk, actor=actor)

    assert db_state() == before
    assert redemption_release(redemption_id=redemption.pk, actor=actor).status == "cancelled"
    assert balance_of(funded).locked == D("0.00")
    assert ledger_verify() == []


def test_a_hold_for_a_voucher_worth_nothing_is_refused_and_spends_nothing(make_program, actor):
    from loyalty.errors import ValidationFailed
    from loyalty.models import MemberBalance
    from loyalty.services import event_ingest
    from tests.factories import PointsEventFactory

    program = make_program(point_value=Decimal("0.001"))  # XOF: 100 points are 0.1 XOF
    event_ingest(program=program, event=PointsEventFactory(member_id="u_1"), actor=actor)
    with pytest.raises(ValidationFailed) as refused:
        hold(program, "100", actor, capture=True)
    assert "points" in refused.value.errors
    balance = MemberBalance.objects.get(program=program, member_id="u_1")
    assert (balance.points_balance, balance.locked) == (Decimal("100.00"), Decimal("0.00"))
    assert not Voucher.objects.exists()


@pytest.mark.parametrize("ending", ["released", "expired"])
def test_a_hold_that_ends_unspent_tells_the_merchant_once(funded, actor, ending):
    """The held points are available again: a business event for the merchant's webhooks,
    whoever ended the hold (their release, an operator, the expiry job), once."""
    with time_machine.travel(T0, tick=False):
        redemption = hold(funded, "150", actor)
    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        for _ in range(2):  # a repeat writes nothing more
            if ending == "released":
                redemption_release(redemption_id=redemption.pk, actor=actor)
            else:
                redemptions_expire_due(actor=actor)

    events = OutboxEvent.objects.filter(event_type=f"loyalty.redemption.{ending}")
    assert events.count() == 1
    payload = events.get().payload
    assert payload["redemption_id"] == str(redemption.pk)
    assert (payload["member_id"], payload["points"]) == ("u_1", "150.00")
    assert payload["status"] == ("cancelled" if ending == "released" else "expired")
    assert payload["balance"]["available"] == "200.00"
    assert events.get().merchant_id == funded.merchant_id


def test_a_frozen_members_voucher_is_not_redeemable_until_unfrozen(funded, actor):
    """A freeze stops value leaving the account, as it stops a capture: the voucher stays
    active, and redeems once the account is unfrozen."""
    voucher = hold(funded, "150", actor, capture=True).voucher
    balance_set_frozen(program=funded, member_id="u_1", frozen=True, actor=actor)
    before = db_state()
    with pytest.raises(AccountFrozen):
        voucher_redeem(voucher=voucher, actor=CASHIER)
    assert db_state() == before
    assert Voucher.objects.get(pk=voucher.pk).status == "active"

    balance_set_frozen(program=funded, member_id="u_1", frozen=False, actor=actor)
    assert voucher_redeem(voucher=voucher, actor=CASHIER).status == "redeemed"


@pytest.mark.parametrize("status", ["suspended", "closed"])
def test_a_voucher_of_a_program_not_active_is_not_redeemable(funded, actor, status):
    voucher = hold(funded, "150", actor, capture=True).voucher
    program_set_status(program_id=funded.pk, status=status, actor=actor)
    before = db_state()
    with pytest.raises(ProgramInactive) as exc:
        voucher_redeem(voucher=voucher, actor=CASHIER)
    assert exc.value.context == {"status": status}
    assert db_state() == before
    assert Voucher.objects.get(pk=voucher.pk).status == "active"


@pytest.mark.parametrize(
    "point_value_at_capture",
    [
        "10000000000000",  # the voucher would be worth 10^18: more than a voucher can hold
        "0.001",  # the voucher would be worth nothing
    ],
)
def test_a_capture_issues_the_voucher_the_hold_was_made_for(funded, actor, point_value_at_capture):
    """Like a card authorisation, the hold fixes the amount: a point value changed before
    the capture does not reprice the voucher (repriced, a raise made the capture a 500 and a
    cut spent the member's points for a voucher worth nothing)."""
    held_for = money_floor(D("150") * funded.point_value, funded.currency)
    redemption = hold(funded, "150", actor)
    program_update(
        program_id=funded.pk, changes={"point_value": D(point_value_at_capture)}, actor=actor
    )

    captured = redemption_capture(redemption_id=redemption.pk, actor=actor)

    assert captured.voucher.value == held_for > 0
    assert balance_of(funded).points_balance == D("50.00")
    assert ledger_verify() == []


def test_a_hold_made_before_holds_kept_their_value_is_priced_at_capture(funded, actor):
    redemption = hold(funded, "150", actor)
    Redemption.objects.filter(pk=redemption.pk).update(value=None)  # as such holds were
    program_update(program_id=funded.pk, changes={"point_value": D("2")}, actor=actor)

    captured = redemption_capture(redemption_id=redemption.pk, actor=actor)

    assert captured.voucher.value == money_floor(D("300"), funded.currency)


def test_a_hold_made_before_holds_kept_their_value_and_now_worth_nothing_is_refused(funded, actor):
    redemption = hold(funded, "150", actor)
    Redemption.objects.filter(pk=redemption.pk).update(value=None)
    program_update(program_id=funded.pk, changes={"point_value": D("0.001")}, actor=actor)
    before = db_state()

    with pytest.raises(InvalidState):
        redemption_capture(redemption_id=redemption.pk, actor=actor)

    assert db_state() == before
    assert redemption_release(redemption_id=redemption.pk, actor=actor).status == "cancelled"
