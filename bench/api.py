"""HTTP ingestion throughput and latency through the web server on loopback, beside pgbench.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/loyalty_bench_api \\
        .venv/bin/python bench/api.py --duration 10 --clients 16

What a merchant integration sees: `POST /api/v1/events` (one purchase per request) and
`POST /api/v1/events/batch` (`--batch-size` purchases per request), each with its
`Idempotency-Key`, a JWT bearer token (RS256, verified once per process, `exp` checked on
every use), through the web
server (`--server`, `--workers` processes x `--threads` threads, persistent database
connections) on 127.0.0.1. The load comes from `--clients` concurrent connections
(threads spread over a few client processes). Members are spread over `--programs` programs
of one merchant, each with a budget and a daily cap (both large enough never to refuse); a
batch holds events of one program (a batch takes one free budget shard of its program). Each
program's `--members` have their balance up front, as in bench/ingest.py and
bench/batch_profile.py (a running program's events are mostly its members' next ones);
`--new-members` leaves them out, so that nearly every event is a member's first.

pgbench TPC-B (`--pgbench-clients`, same duration) runs before and after the HTTP phases on a
scratch database the script initialises; the ratios are to the mean of the two. With
`--with-service`, also the service-level figure of bench/ingest.py (16 processes calling
`event_ingest`). With `--floor`, the host's floor for any Django write endpoint: the same
server, settings and single-event load on bench/floor_app.py (no middleware nor REST
framework; a locked read, an insert and an update per request), after the product's phases.
It prints events/s, p50/p99 per request, CPU per request and the ratios.

Targets (issue 3): single events at 16 clients >= 0.15 x pgbench TPC-B with p99 < 50 ms;
batches >= 3 x pgbench in events/s.
"""

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from benchkit import bench_program, jwt_token, keys, members_create, purchase

ROOT = Path(__file__).resolve().parent.parent
MERCHANT = "m_bench_api"
PRODUCT_APP = "loyalty_project.wsgi:application"
FLOOR_APP = "floor_app:application"


def django_setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loyalty_project.settings.base")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()


# --- set-up ---------------------------------------------------------------------------------


def server_command(
    server: str, port: int, workers: int, threads: int, module: str = PRODUCT_APP
) -> list[str]:
    """The production web server's command line (the Procfile's, on loopback, without the
    request log), serving `module` (the product, or bench/floor_app.py for `--floor`).
    granian and gunicorn, the earlier web servers, are kept for comparison (both in
    requirements-dev.txt)."""
    bin_dir = ROOT / ".venv" / "bin"
    if server == "uwsgi":
        return [
            str(bin_dir / "uwsgi"), "--ini", str(ROOT / "deploy" / "uwsgi.ini"),
            "--module", module,
            "--http-socket", f"127.0.0.1:{port}",
            "--processes", str(workers), "--threads", str(threads), "--disable-logging",
        ]  # fmt: skip
    if server == "granian":
        return [
            str(bin_dir / "granian"), module,
            "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", str(workers), "--blocking-threads", str(threads),
            "--no-ws", "--log-level", "warning",
        ]  # fmt: skip
    return [
        str(bin_dir / "gunicorn"), module,
        "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers),
        "--threads", str(threads),
        "--worker-class", "gthread" if threads > 1 else "sync",
        "--log-level", "warning",
        "--timeout", "60",
        "--keep-alive", "30",
    ]  # fmt: skip


def server_start(
    server: str, port: int, env: dict, workers: int, threads: int, module: str = PRODUCT_APP
):
    cmd = server_command(server, port, workers, threads, module)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_ready(port)
    except RuntimeError:
        server_stop(proc)
        raise
    return proc


def wait_ready(port: int, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"no server answers on port {port}")


def server_stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # our own process group: the server and its workers
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# --- CPU accounting -------------------------------------------------------------------------
# The machine is shared, so events/s moves with whatever else runs; the CPU each side spends
# per request does not (much). Measured from /proc: the server's process group (master and
# workers, every thread) and the PostgreSQL backends of the benchmark's database.

TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(process group, CPU seconds) of a process, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the name: state ppid pgrp session ... utime (12th) stime (13th).
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / TICK


def group_cpu(pgid: int) -> float:
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _proc_cpu(int(entry))
            if found is not None and found[0] == pgid:
                total += found[1]
    return total


def backends_cpu() -> dict[int, float]:
    """CPU seconds of each client backend of this database but our own connection."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
        pids = [row[0] for row in cursor.fetchall()]
    return {pid: found[1] for pid in pids if (found := _proc_cpu(pid)) is not None}


class CpuMeter:
    """CPU of the server's processes and of their database backends over a phase."""

    def __init__(self, server: subprocess.Popen):
        self.pgid = server.pid
        self.server0 = group_cpu(self.pgid)
        self.backends0 = backends_cpu()
        self.client0 = os.times().children_user + os.times().children_system

    def done(self, requests: int) -> dict:
        backends = backends_cpu()
        db = sum(cpu - self.backends0.get(pid, 0.0) for pid, cpu in backends.items())
        client = os.times().children_user + os.times().children_system - self.client0
        per = 1000 / max(requests, 1)
        return {
            "server_ms": (group_cpu(self.pgid) - self.server0) * per,
            "db_ms": db * per,
            "client_ms": client * per,
        }


# --- load (client processes, each with threads) ---------------------------------------------


def client_thread(args, seed, deadline, out, lock) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", args["port"], timeout=30)
    latencies, events, statuses = [], 0, {}
    while time.perf_counter() < deadline:
        program_id = rng.choice(args["program_ids"])
        if args["batch_size"]:
            items = [
                {**purchase(program_id, rng, args["members"]),
                 "idempotency_key": f"bench-{uuid.uuid4()}"}
                for _ in range(args["batch_size"])
            ]  # fmt: skip
            path, body = "/api/v1/events/batch", {"events": items}
        else:
            path, body = "/api/v1/events", purchase(program_id, rng, args["members"])
        headers = {
            "Authorization": f"Bearer {args['token']}",
            "Content-Type": "application/json",
            "Idempotency-Key": f"bench-{uuid.uuid4()}",
        }
        payload = json.dumps(body)
        start = time.perf_counter()
        try:
            conn.request("POST", path, payload, headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            statuses["connection_error"] = statuses.get("connection_error", 0) + 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", args["port"], timeout=30)
            continue
        latencies.append(time.perf_counter() - start)
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status == 201:
            events += 1
        elif response.status == 200 and args["batch_size"]:
            events += sum(1 for r in json.loads(data)["results"] if r["status"] == 201)
    conn.close()
    with lock:
        out.append((latencies, events, statuses))


def client_process(args, threads, seed, start_at, duration, results) -> None:
    out, lock = [], threading.Lock()
    time.sleep(max(start_at - time.time(), 0))
    deadline = time.perf_counter() + duration
    workers = [
        threading.Thread(target=client_thread, args=(args, seed * 1000 + i, deadline, out, lock))
        for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(out)


def run_wrk(args: dict, clients: int, duration: int) -> dict:
    """The same load from wrk (C, an event loop, 2 threads): it leaves the cores to the server."""
    batch = args["batch_size"]
    cmd = [
        "wrk", "-t", str(min(2, clients)), "-c", str(clients), "-d", f"{duration}s",
        "--timeout", "60s", "-s", str(ROOT / "bench" / "wrk_events.lua"),
        f"http://127.0.0.1:{args['port']}",
        "--", args.get("path") or ("/api/v1/events/batch" if batch else "/api/v1/events"),
        args["token"],
        ",".join(args["program_ids"]), str(args["members"]), str(batch), uuid.uuid4().hex[:12],
    ]  # fmt: skip
    load_before = os.getloadavg()[0]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    match = re.search(r"^WRK (\{.*\})$", out, re.MULTILINE)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    r = json.loads(match.group(1))
    seconds = r["duration_us"] / 1e6
    return {
        "requests": r["requests"],
        "events": r["events"],
        "events_per_s": r["events"] / seconds,
        "requests_per_s": r["requests"] / seconds,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "statuses": {
            "ok": r["ok_requests"],
            "other": r["other_requests"],
            "4xx": r["4xx"],
            "5xx": r["5xx"],
            "errors": r["errors"],
        },
        "load": load_before,
    }


def run_load(args: dict, clients: int, duration: int) -> dict:
    if args.get("client") == "wrk":
        return run_wrk(args, clients, duration)
    ctx = mp.get_context("fork")
    processes = min(clients, 4)
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    results = ctx.Queue()
    start_at = time.time() + 1.0
    procs = [
        ctx.Process(target=client_process, args=(args, n, i, start_at, duration, results))
        for i, n in enumerate(per)
    ]
    load_before = os.getloadavg()[0]
    for proc in procs:
        proc.start()
    got = [item for _ in procs for item in results.get(timeout=duration + 120)]
    for proc in procs:
        proc.join()
    latencies = sorted(lat for lats, _, _ in got for lat in lats)
    statuses: dict = {}
    for _, _, st in got:
        for key, n in st.items():
            statuses[key] = statuses.get(key, 0) + n
    events = sum(e for _, e, _ in got)
    return {
        "requests": len(latencies),
        "events": events,
        "events_per_s": events / duration,
        "requests_per_s": len(latencies) / duration,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
        "statuses": statuses,
        "load": load_before,
    }


def connections_per_process(port: int) -> list[int]:
    """How many established connections each server process holds (`ss`, iproute2), most
    first. A keep-alive connection stays with the process that accepted it, which serves its
    connections in turn: an uneven spread is a long tail for the busiest process's clients."""
    if shutil.which("ss") is None:
        return []
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
    ).stdout
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


# --- pgbench --------------------------------------------------------------------------------


def pgbench_tps(url: str, clients: int, duration: int, scale: int) -> float:
    """pgbench TPC-B transactions/s, run as bench/ingest.py runs it (a scratch database)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ingest

    return ingest.pgbench_run(url, clients, duration, scale)[0]


def service_rate(duration: int, workers: int) -> float:
    """bench/ingest.py's spread scenario at `workers` processes (the service-level figure)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import ingest

    program_ids = ingest.programs_create(64, 200, f"api-{uuid.uuid4().hex[:6]}")
    ctx = mp.get_context("spawn")
    return ingest.run_point(ctx, program_ids, 12800, workers, duration, warmup=3)["rate"]


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per phase")
    parser.add_argument("--clients", type=int, default=16, help="concurrent single-event clients")
    parser.add_argument("--batch-clients", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--members", type=int, default=100_000, help="per program")
    parser.add_argument(
        "--new-members",
        action="store_true",
        help="no balance up front: nearly every event is a member's first (creates it)",
    )
    parser.add_argument("--programs", type=int, default=4)
    parser.add_argument(
        "--server",
        choices=["uwsgi", "granian", "gunicorn"],
        default="uwsgi",
        help="the web server: uWSGI as the Procfile runs it, or an earlier one for comparison",
    )
    parser.add_argument(
        "--workers",
        "--gunicorn-workers",
        type=int,
        default=os.cpu_count() + 1,
        help="server processes (default: one more than the cores, as the Procfile)",
    )
    parser.add_argument(
        "--threads",
        "--gunicorn-threads",
        type=int,
        help="threads per process (default 1, as the Procfile; granian's blocking threads), "
        "gunicorn's gthread threads (default 4; 1 runs sync workers)",
    )
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--pgbench-clients", type=int, default=16)
    parser.add_argument("--pgbench-scale", type=int, default=16)
    parser.add_argument("--no-pgbench", action="store_true")
    parser.add_argument("--with-service", action="store_true", help="also run bench/ingest.py")
    parser.add_argument(
        "--client",
        choices=["wrk", "python"],
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk (apt-get install wrk; light on CPU) or Python threads",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also serve a minimal Django write endpoint (bench/floor_app.py) the same way, "
        "under the single-event load: what any Django write costs on this host",
    )
    parser.add_argument("--skip-single", action="store_true")
    parser.add_argument("--skip-batch", action="store_true")
    opts = parser.parse_args()
    if opts.threads is None:
        opts.threads = 4 if opts.server == "gunicorn" else 1

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("Set DATABASE_URL to a PostgreSQL database (it is migrated and written to).")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True
    )  # fmt: skip
    django_setup()

    pem, private = keys()
    program_ids = [bench_program(MERCHANT, "api") for _ in range(opts.programs)]
    if not opts.new_members:
        members_create(program_ids, opts.members)
    env = {
        **os.environ,
        "DEBUG": "False",
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "LOYALTY_JWT_PUBLIC_KEY": pem,
        "LOYALTY_JWT_JWKS_URL": "",
        "CONN_MAX_AGE": "600",
        "LOG_LEVEL": "WARNING",
    }
    args = {
        "port": opts.port,
        "program_ids": program_ids,
        "members": opts.members,
        "token": jwt_token(private, MERCHANT),
        "batch_size": 0,
        "client": opts.client,
    }
    print(
        f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {opts.server} "
        f"{opts.workers}x{opts.threads}; {opts.duration} s per phase; client {opts.client}"
    )
    # pgbench runs before and after the HTTP phases: the ratios are to the mean of the two,
    # since a shared host's speed drifts over the minutes a run takes.
    pgbench_runs = []

    def pgbench(when: str) -> None:
        if not opts.no_pgbench:
            tps = pgbench_tps(url, opts.pgbench_clients, opts.duration, opts.pgbench_scale)
            pgbench_runs.append(tps)
            print(f"pgbench TPC-B {when}: {tps:.0f} tps", flush=True)

    pgbench("before")
    server = server_start(opts.server, opts.port, env, opts.workers, opts.threads)

    def measured(load_args: dict, clients: int) -> dict:
        meter = CpuMeter(server)
        spread: list[int] = []
        sample = threading.Timer(
            opts.duration / 2, lambda: spread.extend(connections_per_process(opts.port))
        )
        sample.start()
        result = run_load(load_args, clients, opts.duration)
        sample.join()
        return {**result, **meter.done(result["requests"]), "connections": spread}

    try:
        run_load(args, opts.clients, 2)  # warm-up: connections, code paths
        single = None if opts.skip_single else measured(args, opts.clients)
        batch = None
        if not opts.skip_batch:
            batch = measured({**args, "batch_size": opts.batch_size}, opts.batch_clients)
    finally:
        server_stop(server)
    floor = None
    if opts.floor:
        from django.db import connection
        from floor_app import floor_tables_create

        with connection.cursor() as cursor:
            floor_tables_create(cursor, opts.members)
        floor_env = {**env, "PYTHONPATH": str(ROOT / "bench")}
        server = server_start(
            opts.server, opts.port, floor_env, opts.workers, opts.threads, FLOOR_APP
        )
        try:
            floor_args = {**args, "path": "/floor"}
            run_load(floor_args, opts.clients, 2)
            floor = measured(floor_args, opts.clients)
        finally:
            server_stop(server)
    pgbench("after")
    tps = sum(pgbench_runs) / len(pgbench_runs) if pgbench_runs else None
    service = service_rate(opts.duration, 16) if opts.with_service else None

    def line(name, r, per):
        ratio = f"{r['events_per_s'] / tps:6.3f} x pgbench" if tps else ""
        print(
            f"{name:<34} {r['events_per_s']:8.0f} events/s  {r['requests_per_s']:7.0f} req/s  "
            f"p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms {per}  {ratio}  "
            f"(load before {r['load']:.1f}; statuses {r['statuses']})"
        )
        total = r["server_ms"] + r["db_ms"] + r["client_ms"]
        print(
            f"{'':<34} CPU ms per request: server {r['server_ms']:.2f} + PostgreSQL "
            f"{r['db_ms']:.2f} + client {r['client_ms']:.2f} = {total:.2f}"
        )
        if r["connections"]:
            spread = " / ".join(map(str, r["connections"]))
            print(f"{'':<34} connections per server process (mid-run): {spread}")

    print()
    if single:
        line(f"HTTP single events, {opts.clients} clients", single, "per event")
    if batch:
        line(f"HTTP batches of {opts.batch_size}, {opts.batch_clients} clients", batch, "per batch")
    if floor:
        line(f"Django floor (bench/floor_app.py), {opts.clients} clients", floor, "per request")
        if single:
            print(
                f"{'':<34} single events do {single['events_per_s'] / floor['events_per_s']:.2f}"
                f" of the floor's requests/s at {single['p99_ms'] / floor['p99_ms']:.2f} x its p99"
            )
    if service is not None:
        ratio = f"{service / tps:5.2f} x pgbench" if tps else ""
        print(f"{'service event_ingest, 16 processes':<34} {service:8.0f} events/s  {ratio}")
    if tps:
        runs = " / ".join(f"{run:.0f}" for run in pgbench_runs)
        print(
            f"{'pgbench TPC-B, ' + str(opts.pgbench_clients) + ' clients':<34} {tps:8.0f} tps"
            f"  (mean of before / after: {runs})"
        )
        if single:
            ratio, p99 = single["events_per_s"] / tps, single["p99_ms"]
            met = "met" if ratio >= 0.15 and p99 < 50 else "not met"
            print(
                f"target single >= 0.15 x pgbench and p99 < 50 ms: {ratio:.3f} x, "
                f"p99 {p99:.1f} ms: {met}"
            )
        if batch:
            ratio = batch["events_per_s"] / tps
            met = "met" if ratio >= 3 else "not met"
            print(f"target batch >= 3 x pgbench: {ratio:.3f} x: {met}")


if __name__ == "__main__":
    main()
