"""The scheduled workers at scale: seeds N members (default 100,000) of one program with spend,
ledger entries and point lots (bulk SQL), then times tier evaluation, point expiry and a
campaign over all of them, and checks the ledger's invariants afterwards.
Target: each job under 60 seconds on the 2-core reference machine.

Runs against DATABASE_URL (PostgreSQL, migrated; the seed adds a throw-away program whose
rows stay, as the ledger and the audit trail are append-only: use a scratch database).

    createdb -h 127.0.0.1 -U postgres loyalty_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python manage.py migrate
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python bench/jobs.py --members 100000

The seed: every member has one purchase entry (0 to 30,000 points, so about 97% of them
cross a tier threshold) split over two lots; for every other member the older lot (60% of
the points) is past its date, so expiry has 50,000 members to take points from.
"""

import argparse
import os
import sys
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")

import django

django.setup()

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from loyalty.actors import Actor, system_actor  # noqa: E402
from loyalty.models import Campaign, Job  # noqa: E402
from loyalty.services import program_create  # noqa: E402
from loyalty.services.jobs import job_create, job_run  # noqa: E402
from loyalty.verify import ledger_verify  # noqa: E402

ACTOR = Actor(id="bench", role="system")

SEED_SQL = [
    # Members: points 0..30,000 (= their only purchase), spend 50x the points.
    """
    INSERT INTO loyalty_memberbalance
        (program_id, member_id, points_balance, locked, lifetime_earned, lifetime_redeemed,
         lifetime_spend, tier, churn_risk, engagement_score, fraud_flags, is_frozen,
         earned_today, purchase_count, last_purchase_at, last_activity_at, created_at,
         updated_at)
    SELECT %(program)s, 'm' || g, p, 0, p, 0, p * 50, 'basic', round(random()::numeric, 4), 0,
           '[]'::jsonb, false, 0, 1, %(earned)s, %(earned)s, %(earned)s, %(earned)s
    FROM (SELECT g, (floor(random() * 3000000) / 100)::numeric(20,2) AS p
          FROM generate_series(1, %(n)s) g) s
    """,
    """
    INSERT INTO loyalty_ledgerentry
        (program_id, balance_id, type, points, amount, currency, module, reference,
         idempotency_key, balance_after, reason, details, metadata, actor_id, actor_role,
         occurred_at, created_at)
    SELECT b.program_id, b.id, 'purchase', b.points_balance, b.lifetime_spend, 'XOF', 'bench',
           'seed-' || b.id, 'seed-' || b.id, b.points_balance, '',
           jsonb_build_object('member_id', b.member_id), '{}'::jsonb, 'bench', 'system',
           %(earned)s, %(earned)s
    FROM loyalty_memberbalance b WHERE b.program_id = %(program)s
    """,
    # Two lots per member; the older one (60%) is past its date for every other member.
    """
    INSERT INTO loyalty_pointlot
        (program_id, balance_id, entry_id, points, remaining, earned_at, expires_at)
    SELECT e.program_id, e.balance_id, e.id, x.pts, x.pts, %(earned)s, x.expires
    FROM loyalty_ledgerentry e
    CROSS JOIN LATERAL (VALUES
        (round(e.points * 0.6, 2),
         CASE WHEN e.balance_id %% 2 = 0 THEN %(expired)s ELSE %(later)s END),
        (e.points - round(e.points * 0.6, 2), %(later)s)
    ) AS x(pts, expires)
    WHERE e.program_id = %(program)s AND x.pts > 0
    """,
]


def seed(n: int):
    program = program_create(
        merchant_id=f"m_bench_{uuid.uuid4().hex[:8]}",
        name="Bench Rewards",
        currency="XOF",
        timezone="Africa/Dakar",
        earn_rate=Decimal("0.02"),
        point_value=Decimal("1"),
        expiry_days=365,
        expiry_warning_days=0,
        actor=ACTOR,
    )
    now = timezone.now()
    params = {
        "program": program.pk,
        "n": n,
        "earned": now - timedelta(days=400),
        "expired": now - timedelta(days=35),
        "later": now + timedelta(days=200),
    }
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in SEED_SQL:
            cursor.execute(sql, params)
        cursor.execute("ANALYZE loyalty_memberbalance")
        cursor.execute("ANALYZE loyalty_ledgerentry")
        cursor.execute("ANALYZE loyalty_pointlot")
    print(f"seeded {n:,} members in {time.perf_counter() - started:.1f} s")
    return program


def timed(kind: str, program) -> float:
    job = job_create(kind=kind, program=program, actor=system_actor("bench"))
    started = time.perf_counter()
    job = job_run(job_id=job.pk)
    elapsed = time.perf_counter() - started
    job.refresh_from_db()
    if job.status != Job.Status.SUCCEEDED:
        raise SystemExit(f"{kind} failed: {job.error}")
    print(f"{kind:<20} {elapsed:6.1f} s  {job.counts}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--target", type=float, default=60.0, help="seconds per job")
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        raise SystemExit("bench/jobs.py needs PostgreSQL (DATABASE_URL=postgres://...)")

    program = seed(args.members)
    Campaign.objects.create(
        program=program, name="bench bonus", segment=Campaign.Segment.ALL,
        bonus_points=Decimal("100"), scheduled_at=timezone.now() - timedelta(minutes=1),
    )  # fmt: skip
    results = {
        kind: timed(kind, program)
        for kind in (Job.Kind.TIER_EVALUATION, Job.Kind.POINT_EXPIRY, Job.Kind.CAMPAIGN_EXECUTION)
    }
    started = time.perf_counter()
    problems = ledger_verify()
    print(f"ledger_verify: {len(problems)} problem(s) in {time.perf_counter() - started:.1f} s")
    slow = {k: v for k, v in results.items() if v > args.target}
    print("PASS" if not slow and not problems else f"FAIL: over {args.target:.0f} s: {slow}")
    if slow or problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
