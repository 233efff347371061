"""Wall time of concurrent batches of one program that share a few members.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python bench/batch_contention.py --clients 4 --rounds 10

`--clients` processes, each on its own connection, call `events_ingest_batch` with a batch of
`--size` purchases of one program (members drawn from `--members`, so concurrent batches of
1,000 over 100,000 members share ~10), all released together each round. A batch that waited
for every balance of another makes a round last as long as the batches one after another; one
that waits only for the shared members' items lets them run side by side. Prints the median,
shortest and longest round time, the events/s, and CPU per event (Python and each backend's, as
bench/batch_profile.py measures them): on a shared machine the CPU figures compare, the wall
times only roughly.
"""

import argparse
import multiprocessing as mp
import random
import statistics
import time
import uuid

from batch_profile import MERCHANT, backend_cpu_ns, batch_items, members_create, setup
from benchkit import bench_program, keys


def client(program_id, args, seed, barrier, out) -> None:
    from django.db import connection

    from loyalty.actors import Actor
    from loyalty.api.events import event_parse
    from loyalty.errors import DomainError
    from loyalty.models import Program
    from loyalty.services.batch import events_ingest_batch

    connection.close()  # never the parent's connection
    program = Program.objects.get(pk=program_id)
    actor = Actor(id="bench", role="system")
    rng = random.Random(seed)
    times, awarded, cpu, db = [], 0, 0.0, 0
    for _ in range(args.rounds):
        raw = batch_items([program_id], rng, args.size, args.members)
        items = [(program, event_parse(item)[1]) for item in raw]
        db_before = backend_cpu_ns()
        barrier.wait()
        cpu_before, start = time.process_time(), time.perf_counter()
        outcomes = events_ingest_batch(items=items, actor=actor)
        times.append((start, time.perf_counter()))
        cpu += time.process_time() - cpu_before
        db += backend_cpu_ns() - db_before
        awarded += sum(1 for o in outcomes if not isinstance(o, DomainError))
    out.put((times, awarded, cpu, db))
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument(
        "--fresh", action="store_true", help="no balance up front: most members are new"
    )
    args = parser.parse_args()

    pem, _ = keys()
    setup(pem)
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    program_id = bench_program(MERCHANT, f"contention {uuid.uuid4().hex[:6]}")
    if not args.fresh:
        members_create([program_id], args.members)
    connection.close()

    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(args.clients), ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(program_id, args, i, barrier, out))
        for i in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    got = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    rounds = [
        max(times[r][1] for times, *_ in got) - min(times[r][0] for times, *_ in got)
        for r in range(args.rounds)
    ]
    events = args.clients * args.rounds * args.size
    awarded = sum(a for _, a, _, _ in got)
    python = 1000 * sum(c for *_, c, _ in got) / events
    postgres = sum(d for *_, d in got) / 1e6 / events
    print(
        f"{args.clients} concurrent batches of {args.size}, {args.rounds} rounds, {events} events"
        f" ({awarded} awarded): round median {1000 * statistics.median(rounds):.0f} ms,"
        f" min {1000 * min(rounds):.0f}, max {1000 * max(rounds):.0f};"
        f" {events / sum(rounds):.0f} events/s; Python {python:.3f} + PostgreSQL"
        f" {postgres:.3f} ms CPU/event"
    )


if __name__ == "__main__":
    main()
