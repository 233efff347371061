"""Two checkouts of the service side by side under the same load: CPU per event of each.

    git worktree add /tmp/loyalty-base HEAD~1
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python bench/ingest_pair.py /tmp/loyalty-base --workers 16 --rounds 5

On a machine others share, CPU per event moves by 10-30 % from one minute to the next, so two
runs of bench/ingest.py one after the other cannot show a change of a few percent. Here half
of the `--workers` processes run the other checkout's code and half this one's, at the same
time, on the same database and programs (as bench/ingest.py's "spread" scenario): both halves
see the same machine. Each round prints events/s and CPU per event (the processes' user and
system time, and their PostgreSQL backends') of each half; the last lines sum all rounds.
Both checkouts must share the database schema (same migrations).
"""

import argparse
import multiprocessing as mp
import os
import random
import resource
import time
import uuid
from pathlib import Path

import ingest

HERE = Path(__file__).resolve().parent.parent


def worker(root, program_ids, members, duration, warmup, barrier, results, seed, side) -> None:
    # The working directory too: Django's set-up puts it first on sys.path (Celery's loader).
    os.chdir(root)
    ingest.django_setup(root)
    from django.db import connection

    import loyalty
    from loyalty.actors import Actor
    from loyalty.models import Program
    from loyalty.services import event_ingest
    from loyalty_project.collector import startup_objects_freeze

    assert Path(loyalty.__file__).is_relative_to(root), f"{side}: {loyalty.__file__}"
    rng = random.Random(seed)
    programs = list(Program.objects.filter(pk__in=program_ids))
    actor = Actor(id="bench", role="system")

    def ingest_until(deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            member = f"u{rng.randrange(members)}"
            event_ingest(
                program=rng.choice(programs), event=ingest.purchase(member, rng), actor=actor
            )
            done += 1
        return done

    ingest_until(time.perf_counter() + 0.2)
    startup_objects_freeze()  # as the web and Celery worker processes do
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    barrier.wait()
    ingest_until(time.perf_counter() + warmup)
    before, db_before = resource.getrusage(resource.RUSAGE_SELF), ingest.backend_cpu_ns(backend)
    done = ingest_until(time.perf_counter() + duration)
    after, db_after = resource.getrusage(resource.RUSAGE_SELF), ingest.backend_cpu_ns(backend)
    connection.close()
    results.put(
        (
            side,
            done,
            after.ru_utime - before.ru_utime,
            after.ru_stime - before.ru_stime,
            None if db_before is None else (db_after - db_before) / 1e9,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="the other checkout (printed as 'base'; this one is 'this')")
    parser.add_argument("--workers", type=int, default=16, help="processes, half per side")
    parser.add_argument("--duration", type=int, default=8, help="seconds per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--programs", type=int, default=64)
    parser.add_argument("--members", type=int, default=200, help="per program")
    args = parser.parse_args()
    roots = {"base": Path(args.base).resolve(), "this": HERE}

    ingest.django_setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    program_ids = ingest.programs_create(
        args.programs, args.members, f"pair-{uuid.uuid4().hex[:6]}"
    )
    connection.close()

    ctx = mp.get_context("spawn")
    totals = {name: [0, 0.0, 0.0, 0.0] for name in roots}
    for round_ in range(args.rounds):
        barrier, results = ctx.Barrier(args.workers), ctx.Queue()
        procs = []
        for i in range(args.workers):
            name = ("base", "this")[(i + round_) % 2]
            seed = round_ * 1000 + i
            procs.append(
                ctx.Process(
                    target=worker,
                    args=(roots[name], program_ids, args.members, args.duration, args.warmup,
                          barrier, results, seed, name),
                )
            )  # fmt: skip
        for proc in procs:
            proc.start()
        got = [results.get(timeout=args.warmup + args.duration + 120) for _ in procs]
        for proc in procs:
            proc.join()
        line = []
        for name in roots:
            mine = [g for g in got if g[0] == name]
            events = sum(g[1] for g in mine)
            user, system = sum(g[2] for g in mine), sum(g[3] for g in mine)
            db = sum(g[4] or 0.0 for g in mine)
            for i, value in enumerate((events, user, system, db)):
                totals[name][i] += value
            line.append(
                f"{name} {events / args.duration:5.0f} ev/s {cpu_text(events, user, system, db)}"
            )
        print(f"round {round_ + 1}: " + " | ".join(line), flush=True)
    for name, (events, user, system, db) in totals.items():
        print(f"all rounds, {name:<4}: {events} events, {cpu_text(events, user, system, db)}")
    base, this = (cpu_total(*totals[name]) for name in ("base", "this"))
    print(f"this / base CPU per event: {this / base:.3f}")


def cpu_total(events, user, system, db) -> float:
    return 1000 * (user + system + db) / events


def cpu_text(events, user, system, db) -> str:
    per = 1000 / events
    return (
        f"ms CPU/event: user {user * per:.3f} + sys {system * per:.3f} + db {db * per:.3f}"
        f" = {cpu_total(events, user, system, db):.3f}"
    )


if __name__ == "__main__":
    main()
