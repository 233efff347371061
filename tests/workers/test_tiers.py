"""Tier evaluation: thresholds by points or spend, upgrade only by default, downgrade policies
at the tier-cycle date, snapshots, events, audit, and rollback."""

from datetime import date, datetime
from decimal import Decimal

import pytest
import time_machine

from audit.models import AuditEntry
from loyalty.actors import system_actor
from loyalty.errors import InvalidState
from loyalty.models import Job, MemberBalance, OutboxEvent, Program, TierSnapshot
from loyalty.services import TierInput, event_ingest, program_update
from loyalty.services.tiers import tier_rollback
from loyalty.verify import ledger_verify
from tests.factories import PurchaseFactory, RefundFactory
from tests.workers.conftest import member

pytestmark = pytest.mark.django_db
TIER = Job.Kind.TIER_EVALUATION
ACTOR = system_actor("test")


def test_upgrade_at_exact_threshold_only(program, earn, run_job):
    earn(program, "at", "1000")  # silver starts at 1000
    earn(program, "below", "999.99")
    earn(program, "gold", "5000")

    job = run_job(TIER, program)

    assert job.status == Job.Status.SUCCEEDED
    assert job.counts["upgraded"] == 2
    assert job.counts["evaluated"] == 3
    assert member(program, "at").tier == "silver"
    assert member(program, "below").tier == "basic"
    assert member(program, "gold").tier == "gold"
    snapshot = TierSnapshot.objects.get(balance=member(program, "gold"))
    assert (snapshot.from_tier, snapshot.to_tier) == ("basic", "gold")
    assert snapshot.qualifying_value == Decimal("5000.00")
    assert snapshot.job_id == job.pk
    events = OutboxEvent.objects.filter(event_type="loyalty.tier.upgraded")
    assert sorted(e.payload["member_id"] for e in events) == ["at", "gold"]
    audits = AuditEntry.objects.filter(action="balance.tier_change")
    assert {a.entity_id for a in audits} == {
        str(member(program, "at").pk),
        str(member(program, "gold").pk),
    }
    assert ledger_verify() == []


def test_rerun_changes_nothing(program, earn, run_job):
    earn(program, "u1", "1500")
    run_job(TIER, program)

    job = run_job(TIER, program)

    assert job.counts.get("upgraded", 0) == 0
    assert TierSnapshot.objects.count() == 1
    assert OutboxEvent.objects.filter(event_type="loyalty.tier.upgraded").count() == 1


def test_redeeming_or_refunds_never_downgrade_by_default(program, buy, run_job, actor):
    from loyalty.services import EventInput, event_ingest

    buy(program, "u1", "100000")  # 2,000 points at 0.02 -> silver
    run_job(TIER, program)
    assert member(program, "u1").tier == "silver"
    refund = EventInput(
        type="refund", member_id="u1", idempotency_key="r1", amount=Decimal("100000"),
        currency="XOF", original_reference=member(program, "u1").entries.get().reference,
    )  # fmt: skip
    event_ingest(program=program, event=refund, actor=actor)

    run_job(TIER, program)

    assert member(program, "u1").tier == "silver"  # policy "none": upgrade only
    assert TierSnapshot.objects.count() == 1


def test_spend_basis_uses_lifetime_spend(make_program, buy, run_job):
    from loyalty.services import TierInput

    program = make_program(
        tier_basis=Program.TierBasis.SPEND,
        tiers=[
            TierInput(name="basic"),
            TierInput(name="silver", min_spend=Decimal("50000")),
            TierInput(name="gold", min_spend=Decimal("200000")),
        ],
    )
    buy(program, "spender", "60000")  # 1,200 points but tiers are by spend
    buy(program, "small", "49999")

    run_job(TIER, program)

    assert member(program, "spender").tier == "silver"
    assert member(program, "small").tier == "basic"


def test_job_for_all_programs_skips_suspended(make_program, earn, run_job, actor):
    from loyalty.services import program_set_status

    active = make_program(name="A")
    suspended = make_program(name="S")
    earn(active, "u1", "1000")
    earn(suspended, "u1", "1000")
    program_set_status(program_id=suspended.pk, status="suspended", actor=actor)

    run_job(TIER, None)

    assert member(active, "u1").tier == "silver"
    assert member(suspended, "u1").tier == "basic"


def test_rollback_restores_tier_once_and_pins_it(program, earn, run_job, actor):
    earn(program, "u1", "1200")
    run_job(TIER, program)
    upgrade = TierSnapshot.objects.get()

    rollback = tier_rollback(snapshot_id=upgrade.pk, actor=actor, reason="points were fraud")

    balance = member(program, "u1")
    assert balance.tier == "basic"
    assert rollback.rollback_of_id == upgrade.pk
    assert (rollback.from_tier, rollback.to_tier) == ("silver", "basic")
    upgrade.refresh_from_db()
    assert upgrade.rolled_back_at is not None
    assert AuditEntry.objects.filter(action="balance.tier_rollback").count() == 1
    assert OutboxEvent.objects.filter(event_type="loyalty.tier.rolled_back").count() == 1
    with pytest.raises(InvalidState):
        tier_rollback(snapshot_id=upgrade.pk, actor=actor)
    with pytest.raises(InvalidState):
        tier_rollback(snapshot_id=rollback.pk, actor=actor)

    # The nightly job does not undo the rollback on the same points...
    run_job(TIER, program)
    assert member(program, "u1").tier == "basic"
    # ...but a member who earns more qualifies again.
    earn(program, "u1", "10")
    run_job(TIER, program)
    assert member(program, "u1").tier == "silver"
    assert TierSnapshot.objects.count() == 3


def test_rollback_refused_when_tier_moved_on(program, earn, run_job, actor):
    earn(program, "u1", "1200")
    run_job(TIER, program)
    first = TierSnapshot.objects.get()
    earn(program, "u1", "5000")
    run_job(TIER, program)  # silver -> gold

    with pytest.raises(InvalidState):
        tier_rollback(snapshot_id=first.pk, actor=actor)
    assert member(program, "u1").tier == "gold"


def _window_program(make_program, policy):
    return make_program(
        timezone="America/New_York",
        tier_downgrade_policy=policy,
        tier_qualifying_days=365,
        tier_cycle_date=date(2027, 1, 1),
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [(Program.DowngradePolicy.ONE_DOWN, "gold"), (Program.DowngradePolicy.RECALCULATE, "silver")],
)
def test_downgrade_at_cycle_date_in_program_timezone(make_program, earn, run_job, policy, expected):
    with time_machine.travel(datetime.fromisoformat("2025-06-01T12:00:00+00:00"), tick=False):
        program = _window_program(make_program, policy)
        earn(program, "vip", "25000")  # platinum, but earned outside the next cycle's window
        run_job(TIER, program)
    with time_machine.travel(datetime.fromisoformat("2026-03-01T12:00:00+00:00"), tick=False):
        earn(program, "vip", "1500")  # inside the window: silver level
        earn(program, "steady", "6000")
        run_job(TIER, program)
    assert member(program, "vip").tier == "platinum"

    # 23:59 on Dec 31 in New York is already Jan 1 in UTC: not yet the cycle date.
    with time_machine.travel(datetime.fromisoformat("2027-01-01T04:59:00+00:00"), tick=False):
        run_job(TIER, program)
    assert member(program, "vip").tier == "platinum"

    with time_machine.travel(datetime.fromisoformat("2027-01-01T05:00:00+00:00"), tick=False):
        job = run_job(TIER, program)
        assert job.counts["downgraded"] == 1
        assert member(program, "vip").tier == expected
        assert member(program, "steady").tier == "gold"  # 6,000 in the window: still gold
        program.refresh_from_db()
        assert program.tier_cycle_date == date(2028, 1, 1)
        assert OutboxEvent.objects.filter(event_type="loyalty.tier.downgraded").count() == 1

        run_job(TIER, program)  # same day again: the cycle is done, nothing moves twice
        assert member(program, "vip").tier == expected
        assert TierSnapshot.objects.filter(to_tier=expected, balance__member_id="vip").count() == 1


def test_cycle_rerun_after_crash_does_not_downgrade_twice(make_program, earn, run_job):
    """A one_down cycle interrupted before the cycle date moved on is re-run: members already
    re-assessed in this cycle are not taken down a second tier."""
    with time_machine.travel(datetime.fromisoformat("2025-06-01T12:00:00+00:00"), tick=False):
        program = _window_program(make_program, Program.DowngradePolicy.ONE_DOWN)
        earn(program, "vip", "25000")
        run_job(TIER, program)
    with time_machine.travel(datetime.fromisoformat("2027-01-02T12:00:00+00:00"), tick=False):
        run_job(TIER, program)
        assert member(program, "vip").tier == "gold"
        # Simulate the crash: the cycle date was never moved on.
        Program.objects.filter(pk=program.pk).update(tier_cycle_date=date(2027, 1, 1))
        run_job(TIER, program)
    assert member(program, "vip").tier == "gold"
    assert MemberBalance.objects.get(member_id="vip").tier_snapshots.count() == 2


def test_a_cycle_date_years_in_the_past_reviews_once_not_once_a_day(make_program, earn, run_job):
    """A stored date years behind (set while the policy was `none`, which never reviews) gives
    one review on the next run, and the date moves past today: not one tier down a day."""
    with time_machine.travel(datetime.fromisoformat("2023-06-01T12:00:00+00:00"), tick=False):
        program = make_program(
            timezone="America/New_York",
            tier_qualifying_days=365,
            tier_cycle_date=date(2023, 7, 1),
        )
        earn(program, "vip", "25000")
        run_job(TIER, program)
    assert member(program, "vip").tier == "platinum"
    with time_machine.travel(datetime.fromisoformat("2027-01-01T17:00:00+00:00"), tick=False):
        # The stored date, sent back unchanged, is still accepted (see tests/api).
        program_update(
            program_id=program.pk,
            changes={"tier_downgrade_policy": "one_down", "tier_cycle_date": date(2023, 7, 1)},
            actor=ACTOR,
        )

    for day in ("2027-01-02", "2027-01-03", "2027-01-04"):
        with time_machine.travel(datetime.fromisoformat(f"{day}T12:00:00+00:00"), tick=False):
            run_job(TIER, program)

    assert member(program, "vip").tier == "gold"  # one tier down, once
    snapshots = TierSnapshot.objects.filter(balance__member_id="vip", to_tier="gold")
    assert [s.reason.split(":")[0] for s in snapshots] == ["tier cycle 2023-07-01"]
    assert OutboxEvent.objects.filter(event_type="loyalty.tier.downgraded").count() == 1
    program.refresh_from_db()
    assert program.tier_cycle_date == date(2027, 7, 1)  # the first yearly date after the run
    moved = AuditEntry.objects.get(action="program.tier_cycle")
    assert (moved.changes["before"], moved.changes["after"]) == (
        {"tier_cycle_date": "2023-07-01"},
        {"tier_cycle_date": "2027-07-01"},
    )


@pytest.mark.parametrize(
    ("cycle", "today", "expected"),
    [
        (date(2027, 1, 1), date(2027, 1, 1), date(2028, 1, 1)),  # on the day: a year on
        (date(2027, 1, 1), date(2027, 1, 2), date(2028, 1, 1)),
        (date(2020, 3, 15), date(2027, 3, 14), date(2027, 3, 15)),  # this year's is still ahead
        (date(2020, 3, 15), date(2027, 3, 15), date(2028, 3, 15)),
        (date(2020, 12, 31), date(2027, 1, 5), date(2027, 12, 31)),
        (date(2024, 2, 29), date(2025, 3, 1), date(2026, 2, 28)),  # no 29 Feb: the 28th
        (date(2020, 2, 29), date(2027, 6, 1), date(2028, 2, 29)),  # and the 29th again
    ],
)
def test_next_cycle_is_the_first_yearly_date_after_today(cycle, today, expected):
    from loyalty.services.tiers import _next_cycle

    assert _next_cycle(cycle, today) == expected


def test_tiers_must_rise_on_the_programs_basis(make_program, api):
    from loyalty.errors import ValidationFailed
    from loyalty.models import Tier
    from tests.api.conftest import OWN

    with pytest.raises(ValidationFailed) as refused:  # the default tiers have no spend
        make_program(tier_basis=Program.TierBasis.SPEND)
    assert "min_spend" in refused.value.errors["tiers"][0]

    program = make_program(merchant_id=OWN)  # by points, the default tiers
    client = api("system")
    response = client.patch(f"/api/v1/programs/{program.pk}", {"tier_basis": "spend"})
    assert (response.status_code, list(response.json()["errors"])) == (400, ["tiers"])
    tiers = [{"name": "basic", "min_points": "0"},
             {"name": "gold", "min_points": "100", "min_spend": "50000"}]  # fmt: skip
    response = client.patch(
        f"/api/v1/programs/{program.pk}", {"tier_basis": "spend", "tiers": tiers}
    )
    assert response.status_code == 200
    assert list(Tier.objects.filter(program=program).values_list("name", flat=True)) == [
        "basic", "gold",
    ]  # fmt: skip


def test_tiers_set_up_before_without_thresholds_on_the_basis_make_nobody_top(
    make_program, buy, run_job
):
    from loyalty.models import Tier

    program = make_program()
    Program.objects.filter(pk=program.pk).update(tier_basis=Program.TierBasis.SPEND)
    assert set(Tier.objects.filter(program=program).values_list("min_spend", flat=True)) == {0}
    buy(program, "small", "100")
    run_job(TIER, program)
    assert member(program, "small").tier == "basic"


def test_the_cycle_review_keeps_a_rolled_back_member_where_the_rollback_put_them(
    make_program, earn, run_job, actor
):
    with time_machine.travel(datetime.fromisoformat("2026-03-01T12:00:00+00:00"), tick=False):
        program = make_program(
            tier_downgrade_policy=Program.DowngradePolicy.RECALCULATE,
            tier_qualifying_days=365,
            tier_cycle_date=date(2026, 6, 1),
        )
        earn(program, "u1", "1200")
        earn(program, "u2", "10")
        run_job(TIER, program)
        assert member(program, "u1").tier == "silver"
        tier_rollback(snapshot_id=TierSnapshot.objects.get().pk, actor=actor, reason="fraud")
    with time_machine.travel(datetime.fromisoformat("2026-06-01T12:00:00+00:00"), tick=False):
        job = run_job(TIER, program)  # the cycle review, with no new points
    assert member(program, "u1").tier == "basic"
    assert (job.counts["evaluated"], job.counts["cycle_reviewed"]) == (2, 2)
    assert ledger_verify() == []


def test_an_older_change_ending_on_todays_tier_cannot_be_rolled_back(program, earn, run_job, actor):
    """basic -> silver, then silver -> gold, then gold -> silver: the member is on silver
    again, but by the last change; rolling back the first would send them to basic."""
    earn(program, "u1", "1200")
    run_job(TIER, program)  # basic -> silver
    first = TierSnapshot.objects.get()
    earn(program, "u1", "5000")
    run_job(TIER, program)  # silver -> gold
    gold = TierSnapshot.objects.latest("id")
    tier_rollback(snapshot_id=gold.pk, actor=actor)  # gold -> silver
    assert member(program, "u1").tier == "silver"
    with pytest.raises(InvalidState):
        tier_rollback(snapshot_id=first.pk, actor=actor)
    assert member(program, "u1").tier == "silver"


def test_a_tier_basis_sent_back_unchanged_does_not_recheck_tiers_set_up_before(api, make_program):
    """A program set up before tiers had to rise on the basis (spend, with point-only tiers),
    read with GET and PATCHed back with a new name: saved as before."""
    from tests.api.conftest import OWN

    program = make_program(merchant_id=OWN)
    Program.objects.filter(pk=program.pk).update(tier_basis=Program.TierBasis.SPEND)
    client = api("ops_marketing")
    url = f"/api/v1/programs/{program.pk}"
    body = client.get(url).json()
    response = client.patch(url, {"name": "Renamed", "tier_basis": body["tier_basis"]})
    assert response.status_code == 200, response.json().get("errors")
    assert Program.objects.get(pk=program.pk).name == "Renamed"


def _tiers(*names_and_points):
    from loyalty.services import TierInput

    return [TierInput(name=n, min_points=Decimal(p)) for n, p in names_and_points]


def test_new_tiers_that_drop_a_tier_members_are_on_are_refused(program, earn, run_job):
    from loyalty.errors import ValidationFailed
    from loyalty.models import Tier

    earn(program, "p", "25000")
    run_job(TIER, program)
    assert member(program, "p").tier == "platinum"
    before = list(Tier.objects.filter(program=program).values_list("name", flat=True))
    for tiers in (
        _tiers(("basic", 0), ("silver", 1000), ("gold", 5000)),  # platinum removed
        _tiers(("basic", 0), ("silver", 1000), ("gold", 5000), ("plat", 20000)),  # renamed
    ):
        with pytest.raises(ValidationFailed) as refused:
            program_update(program_id=program.pk, changes={}, actor=ACTOR, tiers=tiers)
        assert "platinum" in str(refused.value.errors["tiers"])
    assert list(Tier.objects.filter(program=program).values_list("name", flat=True)) == before
    # Tiers no member is on may go; new thresholds for the kept names are fine.
    program_update(
        program_id=program.pk, changes={}, actor=ACTOR,
        tiers=_tiers(("basic", 0), ("gold", 3000), ("platinum", 30000)),
    )  # fmt: skip
    assert member(program, "p").tier == "platinum"


def test_a_rollback_to_a_tier_the_program_no_longer_has_is_refused(program, earn, run_job):
    earn(program, "s", "1500")
    run_job(TIER, program)  # basic -> silver
    snapshot = TierSnapshot.objects.get(balance=member(program, "s"))
    program_update(  # basic renamed: nobody is on it any more
        program_id=program.pk, changes={}, actor=ACTOR,
        tiers=_tiers(("bronze", 0), ("silver", 1000), ("gold", 5000), ("platinum", 20000)),
    )  # fmt: skip
    with pytest.raises(InvalidState):
        tier_rollback(snapshot_id=snapshot.pk, actor=ACTOR)
    assert member(program, "s").tier == "silver"
    assert TierSnapshot.objects.filter(balance=member(program, "s")).count() == 1


def test_the_tier_job_moves_no_one_onto_a_tier_dropped_after_it_started(
    program, earn, run_job, monkeypatch
):
    from loyalty.services import tiers as tiers_module

    earn(program, "p", "25000")  # platinum's threshold is 20,000
    started_with = tiers_module.tier_ladder(program)  # what the job read when it started
    program_update(  # then platinum goes: nobody is on it yet
        program_id=program.pk, changes={}, actor=ACTOR,
        tiers=_tiers(("basic", 0), ("silver", 1000), ("gold", 5000)),
    )  # fmt: skip
    real = tiers_module.tier_ladder
    monkeypatch.setattr(
        tiers_module,
        "tier_ladder",
        lambda program, lock=False: real(program, lock=True) if lock else started_with,
    )
    run_job(TIER, program)
    assert member(program, "p").tier == "gold"


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_tier_job_waiting_on_new_tiers_reads_them_once_they_commit(program, earn, run_job):
    import threading

    from django.db import transaction

    from loyalty.services.programs import _tiers_replace
    from tests.parallel import join_all, start_thread, wait_for_lock_waiters

    earn(program, "p", "6000")  # basic now; gold at 5,000, and "top" in the new tiers
    replaced, release, results = threading.Event(), threading.Event(), {}

    def new_tiers_held_open():
        with transaction.atomic():
            _tiers_replace(program, _tiers(("basic", 0), ("silver", 1000), ("top", 5000)))
            replaced.set()
            release.wait(10)

    writer = start_thread(results, "writer", new_tiers_held_open)
    assert replaced.wait(10)
    # The job reads the old tiers, then its chunk waits on the tier rows the writer holds.
    job_thread = start_thread(results, "job", lambda: run_job(TIER, program))
    wait_for_lock_waiters(1)
    release.set()
    join_all([writer, job_thread])
    job = results["job"]
    assert not isinstance(job, BaseException), job
    assert job.status == Job.Status.SUCCEEDED, job.error
    # The chunk read the tiers once they committed: the new ones (not none, on which it
    # crashed, nor the deleted gold).
    assert member(program, "p").tier == "top"


@pytest.mark.parametrize("policy", ["none", "one_down"])
def test_a_staff_correction_counts_against_the_tier_under_every_policy(
    make_program, actor, run_job, policy
):
    """5,000 points credited by mistake and debited back: no upgrade, under upgrade-only
    (lifetime_earned) as under the window policies (the ledger's net earning)."""
    from loyalty.services import EventInput, event_ingest

    program = make_program(tier_downgrade_policy=policy)

    def adjust(points, key):
        event = EventInput(type="manual_adjust", member_id="u1", idempotency_key=key,
                           points=Decimal(points), reason="correction")  # fmt: skip
        event_ingest(program=program, event=event, actor=actor)

    adjust("5000", "a1")
    adjust("-5000", "a2")
    run_job(TIER, program)
    assert member(program, "u1").tier == "basic"
    assert member(program, "u1").lifetime_earned == Decimal("0.00")


def test_a_refund_of_a_purchase_from_before_the_window_does_not_cost_the_window(
    make_program, run_job, actor
):
    """The window counts earning net of its own clawbacks: a refund of a purchase earned
    before the window takes nothing from it (it took 5,000 of this member's 6,000)."""

    def at(iso):
        return time_machine.travel(datetime.fromisoformat(iso), tick=False)

    def ingest(event_type, **fields):
        factory = PurchaseFactory if event_type == "purchase" else RefundFactory
        event_ingest(program=program, event=factory(member_id="u1", **fields), actor=actor)

    with at("2025-01-10T12:00:00+00:00"):
        program = make_program(
            tier_downgrade_policy=Program.DowngradePolicy.RECALCULATE,
            tier_qualifying_days=365,
            tier_cycle_date=date(2026, 6, 1),
        )
        ingest("purchase", amount=Decimal("250000"), reference="old")  # 5,000 points
    with at("2026-03-01T12:00:00+00:00"):
        ingest("purchase", amount=Decimal("300000"), reference="new")  # 6,000 points
        ingest("refund", amount=Decimal("250000"), original_reference="old")  # -5,000
    with at("2026-06-01T12:00:00+00:00"):
        run_job(TIER, program)  # the review: 6,000 in the window, gold from 5,000

    assert member(program, "u1").tier == "gold"
    assert ledger_verify() == []


def test_a_rollback_pin_holds_only_against_what_it_measured(make_program, buy, run_job, actor):
    """Rolled back on 2,000 points, then the program's tiers go by spend: the member's
    100,000 of spend is not "more than 2,000" of the same thing (compared, it moved them up
    again at once, on the very purchases the rollback set aside)."""
    program = make_program()  # by points, upgrade only
    buy(program, "u1", "100000")  # 2,000 points: silver
    run_job(TIER, program)
    tier_rollback(snapshot_id=TierSnapshot.objects.get().pk, actor=actor, reason="fraud")
    spend_tiers = [
        TierInput("basic"),
        TierInput("silver", min_points=Decimal(1000), min_spend=Decimal(50000)),
        TierInput("gold", min_points=Decimal(5000), min_spend=Decimal(500000)),
    ]
    program_update(program_id=program.pk, changes={"tier_basis": Program.TierBasis.SPEND},
                   tiers=spend_tiers, actor=actor)  # fmt: skip
    program.refresh_from_db()

    run_job(TIER, program)  # nothing earned or spent since the rollback
    assert member(program, "u1").tier == "basic"  # pinned at its spend then: 100,000

    buy(program, "u1", "10")
    run_job(TIER, program)  # spent more than at the rollback
    assert member(program, "u1").tier == "silver"
    pin = TierSnapshot.objects.filter(rollback_of__isnull=False).get()
    assert (pin.qualifying_basis, pin.lifetime_spend) == ("points", Decimal(100000))


def _pinned_silver_member(program, buy, run_job, actor):
    buy(program, "u1", "100000")  # 2,000 points: silver
    run_job(TIER, program)
    assert member(program, "u1").tier == "silver"
    tier_rollback(snapshot_id=TierSnapshot.objects.get().pk, actor=actor, reason="fraud")


def test_a_rollback_pin_recorded_before_measures_were_kept_is_taken_as_points(
    make_program, buy, run_job, actor
):
    program = make_program()
    _pinned_silver_member(program, buy, run_job, actor)
    TierSnapshot.objects.filter(rollback_of__isnull=False).update(qualifying_basis="")
    program_update(program_id=program.pk, changes={"tier_basis": Program.TierBasis.SPEND},
                   tiers=[TierInput("basic"), TierInput("silver", min_spend=Decimal(50000))],
                   actor=actor)  # fmt: skip
    program.refresh_from_db()

    run_job(TIER, program)

    assert member(program, "u1").tier == "basic"


WINDOWED = {"tier_downgrade_policy": Program.DowngradePolicy.ONE_DOWN, "tier_qualifying_days": 365}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ({}, {"tier_downgrade_policy": Program.DowngradePolicy.ONE_DOWN}),  # lifetime -> window
        (WINDOWED, {"tier_qualifying_days": 180}),  # a shorter window
    ],
)
def test_a_rollback_pin_in_points_holds_whatever_the_window(
    make_program, buy, run_job, actor, before, after
):
    """The same basis, another window: the window's total is never more than what the pin
    measured, so the pin holds (dropped, the upgrade the rollback undid came back at once)."""
    program = make_program(**before)
    _pinned_silver_member(program, buy, run_job, actor)
    program_update(program_id=program.pk, changes=after, actor=actor)
    program.refresh_from_db()

    run_job(TIER, program)

    assert member(program, "u1").tier == "basic"
