"""What the audit trail adds to ingestion: N single-event ingestions with the audit entry as
shipped, against the same with every piece of audit work switched off. Target: at most +20%.

Runs against DATABASE_URL (PostgreSQL, already migrated); writes a throw-away program.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_audit \\
        .venv/bin/python bench/audit_overhead.py --events 200 --rounds 15

Rounds alternate (with, without, with, ...) so drift of the machine hits both alike; the
median and the best per-event time of each side are compared (on a shared machine the best
rounds are the least disturbed).
"""

import argparse
import contextlib
import os
import statistics
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")

import django

django.setup()

from django.db import connection  # noqa: E402

from loyalty.actors import Actor  # noqa: E402
from loyalty.services import EventInput, event_ingest, program_create  # noqa: E402
from loyalty.services.ingestion import service, statement  # noqa: E402

ACTOR = Actor(id="bench", role="system", ip="10.0.0.1", user_agent="bench/audit_overhead")


def run(program, n: int, members: int, tag: str) -> float:
    """Seconds per event for n purchases spread over `members` members."""
    started = time.perf_counter()
    for i in range(n):
        event_ingest(
            program=program,
            event=EventInput(
                type="purchase",
                member_id=f"m{i % members}",
                idempotency_key=f"{tag}-{i}",
                amount=Decimal("12500"),
                currency="XOF",
                module="eats",
                reference=f"{tag}-{i}",
                metadata={"email": "someone@example.com", "note": "x"},
            ),
            actor=ACTOR,
        )
    return (time.perf_counter() - started) / n


@contextlib.contextmanager
def audit_off():
    """Ingestion with no audit work at all: neither the ORM path's `audit_record` nor, on the
    one-statement earning path, building the audit row and its part of the statement."""
    cte_insert = statement._cte_insert

    def without_audit_row(obj, name, *args, **kwargs):
        if name != "a":
            cte_insert(obj, name, *args, **kwargs)

    with (
        mock.patch.object(service, "audit_record", return_value=None),
        mock.patch.object(statement, "audit_entries_build", return_value=[None]),
        mock.patch.object(statement, "_cte_insert", without_audit_row),
    ):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--members", type=int, default=200)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("Run against PostgreSQL (DATABASE_URL=postgres://...).")

    program = program_create(
        merchant_id="m_bench", name=f"bench {uuid.uuid4().hex[:6]}", currency="XOF",
        actor=ACTOR, earn_rate=Decimal("0.02"), point_value=Decimal("1"),
        sira_settings={"enabled": False},
    )  # fmt: skip
    run(program, 200, args.members, f"warm-{uuid.uuid4().hex}")  # members, caches, plans

    with_audit, without_audit = [], []
    for r in range(args.rounds):
        with_audit.append(run(program, args.events, args.members, f"a{r}-{uuid.uuid4().hex}"))
        with audit_off():
            without_audit.append(
                run(program, args.events, args.members, f"n{r}-{uuid.uuid4().hex}")
            )
    print(f"events per round: {args.events}, rounds: {args.rounds} (alternating)")
    for label, pick in (("median", statistics.median), ("best", min)):
        a, n = pick(with_audit), pick(without_audit)
        print(
            f"{label:>6}: with audit {a * 1000:.3f} ms/event ({1 / a:,.0f}/s), without "
            f"{n * 1000:.3f} ms/event ({1 / n:,.0f}/s): overhead {(a / n - 1) * 100:+.1f}%"
        )
    print("target: overhead <= +20% (the best-of rounds are the least disturbed by load)")


if __name__ == "__main__":
    main()
