"""Service-level ingestion throughput beside pgbench TPC-B, on the same machine in the same run.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench \\
        .venv/bin/python bench/ingest.py --duration 10 --workers 1,4,16

Each worker is a separate PROCESS (spawned, Django set up in it, its own connection) calling
`event_ingest` in a loop: one purchase per transaction with everything the product does on
that path (balance row lock, SIRA rules, tier multiplier, daily cap, sharded budget, ledger
entry, point lot, outbox row, audit entry with its digest). Two scenarios:

- spread: the members are spread over many programs;
- hot:    the same number of members in ONE program.

Every program has a budget limit and a daily cap (both large enough never to refuse), so
their bookkeeping is on the path. pgbench TPC-B (16 clients, same duration) runs before and
after the points, on a scratch database this script initialises with `pgbench -i`; the ratios
are to the mean of the two runs (a shared host's speed drifts over the minutes a run takes).
It prints events/s, the ratio to pgbench and hot/spread. `--profile` counts the SQL
statements of one event instead.

Targets (issue 2): at 16 processes, events/s >= 0.25 x pgbench, and hot >= 0.8 x spread.
"""

import argparse
import multiprocessing as mp
import os
import random
import re
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
PGBENCH_DB = "loyalty_bench_pgbench"
MODULES = ["eats", "shop", "rides"]


def django_setup(root: Path = ROOT) -> None:
    sys.path.insert(0, str(root))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DEBUG", "False")  # as in production: no query log in memory
    import django

    django.setup()


def purchase(member_id: str, rng: random.Random):
    from loyalty.services import EventInput

    return EventInput(
        type="purchase",
        member_id=member_id,
        idempotency_key=f"bench-{uuid.uuid4()}",
        amount=Decimal(rng.randrange(500, 20000, 25)),
        currency="XOF",
        module=rng.choice(MODULES),
        reference=f"order-{uuid.uuid4().hex[:16]}",
    )


def backend_cpu_ns(pid: int) -> int | None:
    """CPU time of a local PostgreSQL backend (/proc/<pid>/schedstat), None when unreadable
    (a remote server, or no permission)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def backends_of(dbname: str) -> dict[int, int]:
    """CPU time so far of every local backend connected to `dbname`."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith("postgres: ") and f" {dbname} " in cmdline:
            cpu = backend_cpu_ns(int(proc.name))
            if cpu is not None:
                found[int(proc.name)] = cpu
    return found


# --- set-up (parent process) ----------------------------------------------------------------


def programs_create(count: int, members_per_program: int, tag: str) -> list[str]:
    """`count` programs with a budget and a daily cap, each with its members' balances."""
    from loyalty.actors import Actor
    from loyalty.models import MemberBalance
    from loyalty.services import program_create

    actor = Actor(id="bench", role="system")
    ids = []
    for i in range(count):
        program = program_create(
            merchant_id=f"m_bench_{tag}",
            name=f"bench {tag} {i}",
            currency="XOF",
            timezone="Africa/Dakar",
            earn_rate=Decimal("0.02"),
            point_value=Decimal("1"),
            expiry_days=365,
            budget_limit=Decimal("1000000000000"),
            max_earn_per_day=Decimal("1000000000"),
            fraud_detection_enabled=True,
            sira_settings={},  # the seed's eight rules, on
            actor=actor,
        )
        MemberBalance.objects.bulk_create(
            (
                MemberBalance(program=program, member_id=f"u{n}", tier="basic")
                for n in range(members_per_program)
            ),
            batch_size=1000,  # server-side binding allows at most 65,535 parameters
        )
        ids.append(str(program.pk))
    return ids


# --- workers (child processes) --------------------------------------------------------------


def worker(program_ids, members, duration, warmup, barrier, results, seed) -> None:
    django_setup()
    from django.db import connection

    from loyalty.actors import Actor
    from loyalty.errors import DomainError
    from loyalty.models import Program
    from loyalty.services import event_ingest
    from loyalty_project.collector import startup_objects_freeze

    rng = random.Random(seed)
    programs = list(Program.objects.filter(pk__in=program_ids))
    actor = Actor(id="bench", role="system")
    for _ in range(3):  # warm up the connection and the code paths, not counted
        event_ingest(program=rng.choice(programs), event=purchase("warmup", rng), actor=actor)
    # As the web and Celery worker processes do once their code is loaded.
    startup_objects_freeze()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    barrier.wait()

    def ingest_until(deadline: float) -> tuple[int, int, dict]:
        done, refused, failed = 0, 0, {}
        while time.perf_counter() < deadline:
            program = rng.choice(programs)
            event = purchase(f"u{rng.randrange(members)}", rng)
            try:
                event_ingest(program=program, event=event, actor=actor)
                done += 1
            except DomainError as exc:
                refused += 1
                failed[exc.code] = failed.get(exc.code, 0) + 1
            except Exception as exc:  # a deadlock or a bug: count it, the run reports it
                name = type(exc).__name__
                failed[name] = failed.get(name, 0) + 1
        return done, refused, failed

    # Every worker runs the same load untimed first, all together: a long-lived worker's
    # connection has mapped the shared buffers it uses; a new backend page-faults on each
    # one, which would otherwise be counted in a short run.
    ingest_until(time.perf_counter() + warmup)
    cpu_start, db_cpu_start = time.process_time(), backend_cpu_ns(backend)
    start = time.perf_counter()
    done, refused, failed = ingest_until(start + duration)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    db_cpu_end = backend_cpu_ns(backend)
    db_cpu = None if db_cpu_start is None else (db_cpu_end - db_cpu_start) / 1e9
    connection.close()
    results.put((done, refused, failed, elapsed, cpu, db_cpu))


def run_point(ctx, program_ids, members, workers, duration, warmup) -> dict:
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=worker,
            args=(program_ids, members, duration, warmup, barrier, results, seed),
        )
        for seed in range(workers)
    ]
    load_before = os.getloadavg()[0]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=warmup + duration + 120) for _ in procs]
    for proc in procs:
        proc.join()
    done = sum(g[0] for g in got)
    failed: dict[str, int] = {}
    for g in got:
        for name, n in g[2].items():
            failed[name] = failed.get(name, 0) + n
    elapsed = max(g[3] for g in got)
    db_cpu = None if any(g[5] is None for g in got) else sum(g[5] for g in got)
    return {
        "events": done,
        "rate": done / elapsed,
        "failed": failed,
        "load": load_before,
        # CPU per event (ms): Python in the workers + their PostgreSQL backends. Unlike
        # events/s, it hardly depends on what else the machine runs.
        "cpu_ms": None if db_cpu is None else 1000 * (sum(g[4] for g in got) + db_cpu) / done,
        # Its two parts: Python (the workers) and PostgreSQL (their backends).
        "py_ms": 1000 * sum(g[4] for g in got) / done,
        "db_ms": None if db_cpu is None else 1000 * db_cpu / done,
    }


# --- pgbench --------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a local process and its threads, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pgbench_run(
    url: str, clients: int, duration: int, scale: int, warmup: int = 3
) -> tuple[float, float | None]:
    """TPC-B transactions/s on a scratch database, and the CPU (ms) per transaction of the
    pgbench client plus its backends (None when the backends cannot be read).

    pgbench runs `warmup` seconds untimed first, as our own workers do: the rate is the mean of
    its per-second progress reports after that, the CPU is sampled from then on."""
    parsed = urlparse(url)
    conn = ["-h", parsed.hostname or "127.0.0.1", "-p", str(parsed.port or 5432)]
    conn += ["-U", parsed.username or "postgres"]
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    subprocess.run(["dropdb", *conn, "--if-exists", PGBENCH_DB], check=True, env=env)
    subprocess.run(["createdb", *conn, PGBENCH_DB], check=True, env=env)
    subprocess.run(
        ["pgbench", *conn, "-i", "-q", "-s", str(scale), PGBENCH_DB],
        check=True,
        env=env,
        capture_output=True,
    )
    command = ["pgbench", *conn, "-n", "-c", str(clients), "-j", "2", "-P", "1"]
    command += ["-T", str(warmup + duration), PGBENCH_DB]
    bench = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    timed_from = time.monotonic() + warmup
    # The backends and the client live as long as the run: sample their CPU until it ends.
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    client_first = client_last = None
    sampled_from = sampled_to = None
    while bench.poll() is None:
        if time.monotonic() >= timed_from:
            sampled_to = time.monotonic()
            sampled_from = sampled_from or sampled_to
            for pid, cpu in backends_of(PGBENCH_DB).items():
                first.setdefault(pid, cpu)
                last[pid] = cpu
            client = process_cpu_s(bench.pid)
            if client is not None:
                client_first = client if client_first is None else client_first
                client_last = client
        time.sleep(0.2)
    progress = bench.stderr.read()
    subprocess.run(["dropdb", *conn, "--if-exists", PGBENCH_DB], check=True, env=env)
    if bench.returncode != 0:  # a client aborted: its rate would be missing from the figure
        raise RuntimeError(f"pgbench failed ({bench.returncode}):\n{progress}")
    # "progress: 5.0 s, 3412.9 tps, lat 4.6 ms stddev 2.1, 0 failed": one line per second.
    rates = [
        float(tps)
        for at, tps in re.findall(r"progress: ([\d.]+) s, ([\d.]+) tps", progress)
        if float(at) > warmup
    ]
    if not rates:
        raise RuntimeError(f"cannot read pgbench progress:\n{progress}")
    tps = sum(rates) / len(rates)
    # The CPU was sampled over a slightly shorter window than the reports cover (every 0.2 s).
    transactions = tps * (sampled_to - sampled_from) if sampled_from else 0
    backend_cpu = sum(last[pid] - first[pid] for pid in last) / 1e9
    client_cpu = (client_last - client_first) if client_first is not None else 0.0
    cpu_ms = 1000 * (client_cpu + backend_cpu) / transactions if last and transactions else None
    return tps, cpu_ms


# --- profile --------------------------------------------------------------------------------


def profile(events: int) -> None:
    """The SQL statements of one purchase of an existing member, and the mean over `events`."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from loyalty.actors import Actor
    from loyalty.models import Program
    from loyalty.services import event_ingest

    (program_id,) = programs_create(1, 100, f"profile-{uuid.uuid4().hex[:6]}")
    program = Program.objects.get(pk=program_id)
    actor = Actor(id="bench", role="system")
    rng = random.Random(1)
    event_ingest(program=program, event=purchase("u1", rng), actor=actor)
    with CaptureQueriesContext(connection) as one:
        event_ingest(program=program, event=purchase("u1", rng), actor=actor)
    print(f"one purchase of an existing member: {len(one.captured_queries)} statements")
    for query in one.captured_queries:
        print(f"  {query['time']:>6}s  {query['sql'][:150]}")
    with CaptureQueriesContext(connection) as many:
        start = time.perf_counter()
        for _ in range(events):
            member = f"u{rng.randrange(100)}"
            event_ingest(program=program, event=purchase(member, rng), actor=actor)
        elapsed = time.perf_counter() - start
    print(
        f"{events} purchases, 1 process: {len(many.captured_queries) / events:.1f} statements "
        f"per event, {events / elapsed:.0f} events/s"
    )


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per point")
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed seconds before each point (and pgbench)"
    )
    parser.add_argument("--workers", default="1,4,16", help="process counts, comma-separated")
    parser.add_argument("--scenarios", default="spread,hot")
    parser.add_argument("--programs", type=int, default=64, help="programs in 'spread'")
    parser.add_argument("--members", type=int, default=12800, help="members per scenario")
    parser.add_argument("--pgbench-clients", type=int, default=16)
    parser.add_argument("--pgbench-scale", type=int, default=16)
    parser.add_argument("--no-pgbench", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per point; the best is kept (noisy hosts)"
    )
    parser.add_argument("--profile", type=int, metavar="N", help="profile N events and stop")
    args = parser.parse_args()

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("DATABASE_URL must point at PostgreSQL (a scratch database: it is written to)")
    django_setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    if args.profile:
        profile(args.profile)
        return

    tag = uuid.uuid4().hex[:6]
    workers = [int(w) for w in args.workers.split(",")]
    scenarios = args.scenarios.split(",")
    setup = {
        "spread": (args.programs, args.members // args.programs),
        "hot": (1, args.members),
    }
    program_ids = {
        name: programs_create(count, per, f"{name}-{tag}")
        for name, (count, per) in setup.items()
        if name in scenarios
    }
    connection.close()  # the children open their own

    print(f"machine: {os.cpu_count()} cores; load average now {os.getloadavg()}")

    def pgbench(when: str) -> tuple[float, float | None]:
        tps, cpu = pgbench_run(
            url, args.pgbench_clients, args.duration, args.pgbench_scale, args.warmup
        )
        cpu_text = f", {cpu:.2f} ms CPU per transaction" if cpu else ""
        print(
            f"pgbench TPC-B {when}: {tps:.0f} tps ({args.pgbench_clients} clients, -j 2, "
            f"scale {args.pgbench_scale}, {args.duration} s after {args.warmup} s{cpu_text})",
            flush=True,
        )
        return tps, cpu

    # pgbench runs before the points and again after them: the ratios are to the mean of the
    # two, since a shared host's speed drifts over the minutes a run takes.
    before = None if args.no_pgbench else pgbench("before")

    ctx = mp.get_context("spawn")
    points = []
    for n in workers:
        for name in scenarios:
            members = setup[name][1]
            runs = [
                run_point(ctx, program_ids[name], members, n, args.duration, args.warmup)
                for _ in range(args.repeat)
            ]
            points.append((name, n, max(runs, key=lambda r: r["rate"])))
            print(f"  {name} at {n} processes: {points[-1][2]['rate']:.0f} events/s", flush=True)
    tps = pg_cpu = None
    if before is not None:
        after = pgbench("after")
        tps = (before[0] + after[0]) / 2
        pg_cpu = None if None in (before[1], after[1]) else (before[1] + after[1]) / 2
        print(f"pgbench TPC-B, mean of both: {tps:.0f} tps")

    rates: dict[tuple[str, int], float] = {}
    header = f"{'scenario':<8} {'procs':>5} {'events':>8} {'events/s':>9} {'x pgbench':>9}"
    print(f"{header} {'cpu ms/ev':>9} {'(py + db)':>11} {'x pgb cpu':>9}  load  errors")
    for name, n, point in points:
        rates[name, n] = point["rate"]
        ratio = f"{point['rate'] / tps:.3f}" if tps else "-"
        cpu = f"{point['cpu_ms']:.2f}" if point["cpu_ms"] else "-"
        split = f"{point['py_ms']:.2f} + {point['db_ms']:.2f}" if point["db_ms"] else "-"
        # pgbench's CPU per transaction over ours: the throughput ratio on a quiet host
        # when both are CPU-bound.
        cpu_ratio = f"{pg_cpu / point['cpu_ms']:.3f}" if pg_cpu and point["cpu_ms"] else "-"
        print(
            f"{name:<8} {n:>5} {point['events']:>8} {point['rate']:>9.0f} {ratio:>9}"
            f" {cpu:>9} {split:>11} {cpu_ratio:>9}  {point['load']:.1f}"
            f"  {point['failed'] or ''}",
            flush=True,
        )
    for n in workers:
        if ("hot", n) in rates and ("spread", n) in rates:
            print(f"hot/spread at {n} processes: {rates['hot', n] / rates['spread', n]:.2f}")

    from loyalty.verify import ledger_verify

    mismatches = ledger_verify()
    print(f"ledger_verify after the run: {len(mismatches)} mismatch(es)")
    if mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
